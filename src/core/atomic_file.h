// Whole small files (metrics, plots, JSON) written so that a reader, or a kill at any moment,
// sees the old file or the new one, never a torn one: the bytes go to PATH.tmp, then a rename.
#pragma once
#include <string>
#include <string_view>

namespace primal {

// Throws Error (naming the file and the system's reason) when writing or renaming fails.
void write_file_atomic(const std::string& path, std::string_view bytes);

}  // namespace primal
