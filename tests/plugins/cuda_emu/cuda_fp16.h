// Emulator stand-in: float16 storage with round-to-nearest-even conversions.
#pragma once

#include <cstdint>
#include <cstring>

struct __half
{
    uint16_t bits;
};

inline float __half2float(__half h)
{
    uint32_t const sign = (h.bits & 0x8000u) << 16;
    uint32_t exp = (h.bits >> 10) & 0x1fu;
    uint32_t mant = h.bits & 0x3ffu;
    uint32_t out;
    if (exp == 0)
    {
        if (mant == 0)
        {
            out = sign;
        }
        else
        {
            exp = 127 - 15 + 1;
            while ((mant & 0x400u) == 0)
            {
                mant <<= 1;
                --exp;
            }
            out = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
        }
    }
    else if (exp == 31)
    {
        out = sign | 0x7f800000u | (mant << 13);
    }
    else
    {
        out = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    std::memcpy(&f, &out, 4);
    return f;
}

inline __half __float2half_rn(float f)
{
    uint32_t x;
    std::memcpy(&x, &f, 4);
    uint32_t const sign = (x >> 16) & 0x8000u;
    int32_t const exp = static_cast<int32_t>((x >> 23) & 0xffu) - 127 + 15;
    uint32_t mant = x & 0x7fffffu;
    if (((x >> 23) & 0xffu) == 0xffu)
    {
        return __half{static_cast<uint16_t>(sign | 0x7c00u | (mant ? 0x200u : 0u))};
    }
    if (exp >= 31)
    {
        return __half{static_cast<uint16_t>(sign | 0x7c00u)};
    }
    if (exp <= 0)
    {
        if (exp < -10)
        {
            return __half{static_cast<uint16_t>(sign)};
        }
        mant |= 0x800000u;
        int const shift = 14 - exp;
        uint32_t half_mant = mant >> shift;
        uint32_t const rem = mant & ((1u << shift) - 1);
        uint32_t const halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (half_mant & 1u)))
        {
            ++half_mant;
        }
        return __half{static_cast<uint16_t>(sign | half_mant)};
    }
    uint32_t out = sign | (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
    uint32_t const rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (out & 1u)))
    {
        ++out; // carries into the exponent correctly, up to infinity
    }
    return __half{static_cast<uint16_t>(out)};
}
