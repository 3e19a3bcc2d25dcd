// Emulator stand-in: bfloat16 storage with round-to-nearest-even conversions.
#pragma once

#include <cstdint>
#include <cstring>

struct __nv_bfloat16
{
    uint16_t bits;
};

inline float __bfloat162float(__nv_bfloat16 h)
{
    uint32_t const x = static_cast<uint32_t>(h.bits) << 16;
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}

inline __nv_bfloat16 __float2bfloat16_rn(float f)
{
    uint32_t x;
    std::memcpy(&x, &f, 4);
    if ((x & 0x7f800000u) == 0x7f800000u && (x & 0x7fffffu))
    {
        return __nv_bfloat16{static_cast<uint16_t>((x >> 16) | 0x40u)};
    }
    x += 0x7fffu + ((x >> 16) & 1u);
    return __nv_bfloat16{static_cast<uint16_t>(x >> 16)};
}
