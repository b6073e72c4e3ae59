// The one translation unit that compiles stb's image reader and writer (header-only
// libraries from Debian's libstb-dev).
#define STB_IMAGE_IMPLEMENTATION
#define STBI_FAILURE_USERMSG
#include <stb_image.h>
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>
