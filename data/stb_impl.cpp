// The one translation unit that compiles stb's image writer (header-only, from Debian's
// libstb-dev). The reader, stb_image, is compiled in data/image_folder.cpp, its only user.
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>
