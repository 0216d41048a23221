// XXH3-128 (seed 0, default secret), bit-exact with XXH3_128bits() of xxhash.h 0.8.x and so
// with `xxhsum -H2`. Guarantees: every length class of the reference is implemented as there
// (0, 1-3, 4-8, 9-16, 17-128, 129-240, >240); the result does not depend on the kernel chosen
// for long inputs (Xxh3.Long.cs); reads stay inside the input span; nothing is allocated.
using System.Buffers.Binary;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Target.Dedup.Hashing;

public static partial class Xxh3
{
    private const ulong Prime32_1 = 0x9E3779B1UL;
    private const ulong Prime32_2 = 0x85EBCA77UL;
    private const ulong Prime32_3 = 0xC2B2AE3DUL;
    private const ulong Prime64_1 = 0x9E3779B185EBCA87UL;
    private const ulong Prime64_2 = 0xC2B2AE3D27D4EB4FUL;
    private const ulong Prime64_3 = 0x165667B19E3779F9UL;
    private const ulong Prime64_4 = 0x85EBCA77C2B2AE63UL;
    private const ulong Prime64_5 = 0x27D4EB2F165667C5UL;

    private const int SecretSizeBytes = 192;
    // XXH3_SECRET_SIZE_MIN: the mid-size paths index the secret relative to this, not to its real size.
    private const int SecretSizeMinBytes = 136;
    private const int MidSizeMaxBytes = 240;
    private const int MidSizeStartOffset = 3;
    private const int MidSizeLastOffset = 17;

    // XXH3_kSecret, taken from FARSH.
    private static ReadOnlySpan<byte> Secret =>
    [
        0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
        0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
        0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
        0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
        0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
        0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
        0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
        0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
        0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
        0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
        0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
        0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
    ];

    public static UInt128 Hash128(ReadOnlySpan<byte> data)
    {
        Hash128(data, out ulong low64, out ulong high64);
        return new UInt128(high64, low64);
    }

    public static void Hash128(ReadOnlySpan<byte> data, out ulong low64, out ulong high64) =>
        Hash128(data, BestKernel, out low64, out high64);

    /// <summary>Same as the public overload, with the long-input kernel forced (tests compare kernels).</summary>
    internal static void Hash128(ReadOnlySpan<byte> data, Xxh3Kernel kernel, out ulong low64, out ulong high64)
    {
        ref byte input = ref MemoryMarshal.GetReference(data);
        nuint length = (nuint)data.Length;
        if (length <= 16)
            Length0To16(ref input, length, out low64, out high64);
        else if (length <= 128)
            Length17To128(ref input, length, out low64, out high64);
        else if (length <= MidSizeMaxBytes)
            Length129To240(ref input, length, out low64, out high64);
        else
            HashLong(ref input, length, kernel, out low64, out high64);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong ReadLE64(ref byte source, nuint offset)
    {
        ulong value = Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref source, offset));
        return BitConverter.IsLittleEndian ? value : BinaryPrimitives.ReverseEndianness(value);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static uint ReadLE32(ref byte source, nuint offset)
    {
        uint value = Unsafe.ReadUnaligned<uint>(ref Unsafe.Add(ref source, offset));
        return BitConverter.IsLittleEndian ? value : BinaryPrimitives.ReverseEndianness(value);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong SecretLE64(nuint offset) => ReadLE64(ref MemoryMarshal.GetReference(Secret), offset);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static uint SecretLE32(nuint offset) => ReadLE32(ref MemoryMarshal.GetReference(Secret), offset);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Mul128Fold64(ulong lhs, ulong rhs)
    {
        ulong high = Math.BigMul(lhs, rhs, out ulong low);
        return low ^ high;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Xxh64Avalanche(ulong h)
    {
        h ^= h >> 33;
        h *= Prime64_2;
        h ^= h >> 29;
        h *= Prime64_3;
        h ^= h >> 32;
        return h;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Avalanche(ulong h)
    {
        h ^= h >> 37;
        h *= 0x165667919E3779F9UL;
        h ^= h >> 32;
        return h;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Length0To16(ref byte input, nuint length, out ulong low64, out ulong high64)
    {
        if (length > 8)
        {
            Length9To16(ref input, length, out low64, out high64);
        }
        else if (length >= 4)
        {
            Length4To8(ref input, length, out low64, out high64);
        }
        else if (length > 0)
        {
            Length1To3(ref input, length, out low64, out high64);
        }
        else
        {
            low64 = Xxh64Avalanche(SecretLE64(64) ^ SecretLE64(72));
            high64 = Xxh64Avalanche(SecretLE64(80) ^ SecretLE64(88));
        }
    }

    private static void Length1To3(ref byte input, nuint length, out ulong low64, out ulong high64)
    {
        uint c1 = input;
        uint c2 = Unsafe.Add(ref input, length >> 1);
        uint c3 = Unsafe.Add(ref input, length - 1);
        uint combinedLow = (c1 << 16) | (c2 << 24) | c3 | ((uint)length << 8);
        uint combinedHigh = BitOperations.RotateLeft(BinaryPrimitives.ReverseEndianness(combinedLow), 13);
        ulong bitflipLow = SecretLE32(0) ^ SecretLE32(4);
        ulong bitflipHigh = SecretLE32(8) ^ SecretLE32(12);
        low64 = Xxh64Avalanche(combinedLow ^ bitflipLow);
        high64 = Xxh64Avalanche(combinedHigh ^ bitflipHigh);
    }

    private static void Length4To8(ref byte input, nuint length, out ulong low64, out ulong high64)
    {
        ulong inputLow = ReadLE32(ref input, 0);
        ulong inputHigh = ReadLE32(ref input, length - 4);
        ulong input64 = inputLow + (inputHigh << 32);
        ulong bitflip = SecretLE64(16) ^ SecretLE64(24);
        ulong keyed = input64 ^ bitflip;

        ulong mHigh = Math.BigMul(keyed, Prime64_1 + ((ulong)length << 2), out ulong mLow);
        mHigh += mLow << 1;
        mLow ^= mHigh >> 3;

        mLow ^= mLow >> 35;
        mLow *= 0x9FB21C651E98DF25UL;
        mLow ^= mLow >> 28;
        low64 = mLow;
        high64 = Avalanche(mHigh);
    }

    private static void Length9To16(ref byte input, nuint length, out ulong low64, out ulong high64)
    {
        ulong bitflipLow = SecretLE64(32) ^ SecretLE64(40);
        ulong bitflipHigh = SecretLE64(48) ^ SecretLE64(56);
        ulong inputLow = ReadLE64(ref input, 0);
        ulong inputHigh = ReadLE64(ref input, length - 8);

        ulong mHigh = Math.BigMul(inputLow ^ inputHigh ^ bitflipLow, Prime64_1, out ulong mLow);
        mLow += (ulong)(length - 1) << 54;
        inputHigh ^= bitflipHigh;
        mHigh += inputHigh + (ulong)(uint)inputHigh * (Prime32_2 - 1);
        mLow ^= BinaryPrimitives.ReverseEndianness(mHigh);

        ulong hHigh = Math.BigMul(mLow, Prime64_2, out ulong hLow);
        hHigh += mHigh * Prime64_2;
        low64 = Avalanche(hLow);
        high64 = Avalanche(hHigh);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Mix16(ref byte input, nuint inputOffset, nuint secretOffset)
    {
        ulong inputLow = ReadLE64(ref input, inputOffset);
        ulong inputHigh = ReadLE64(ref input, inputOffset + 8);
        return Mul128Fold64(inputLow ^ SecretLE64(secretOffset), inputHigh ^ SecretLE64(secretOffset + 8));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Mix32(ref ulong accLow, ref ulong accHigh, ref byte input, nuint offset1, nuint offset2, nuint secretOffset)
    {
        accLow += Mix16(ref input, offset1, secretOffset);
        accLow ^= ReadLE64(ref input, offset2) + ReadLE64(ref input, offset2 + 8);
        accHigh += Mix16(ref input, offset2, secretOffset + 16);
        accHigh ^= ReadLE64(ref input, offset1) + ReadLE64(ref input, offset1 + 8);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void FinishMid(ulong accLow, ulong accHigh, nuint length, out ulong low64, out ulong high64)
    {
        ulong low = accLow + accHigh;
        ulong high = accLow * Prime64_1 + accHigh * Prime64_4 + (ulong)length * Prime64_2;
        low64 = Avalanche(low);
        high64 = 0UL - Avalanche(high);
    }

    private static void Length17To128(ref byte input, nuint length, out ulong low64, out ulong high64)
    {
        ulong accLow = (ulong)length * Prime64_1;
        ulong accHigh = 0;
        if (length > 32)
        {
            if (length > 64)
            {
                if (length > 96)
                    Mix32(ref accLow, ref accHigh, ref input, 48, length - 64, 96);
                Mix32(ref accLow, ref accHigh, ref input, 32, length - 48, 64);
            }
            Mix32(ref accLow, ref accHigh, ref input, 16, length - 32, 32);
        }
        Mix32(ref accLow, ref accHigh, ref input, 0, length - 16, 0);
        FinishMid(accLow, accHigh, length, out low64, out high64);
    }

    private static void Length129To240(ref byte input, nuint length, out ulong low64, out ulong high64)
    {
        ulong accLow = (ulong)length * Prime64_1;
        ulong accHigh = 0;
        nuint rounds = length / 32;
        for (nuint i = 0; i < 4; i++)
            Mix32(ref accLow, ref accHigh, ref input, 32 * i, 32 * i + 16, 32 * i);
        accLow = Avalanche(accLow);
        accHigh = Avalanche(accHigh);
        for (nuint i = 4; i < rounds; i++)
            Mix32(ref accLow, ref accHigh, ref input, 32 * i, 32 * i + 16, MidSizeStartOffset + 32 * (i - 4));
        Mix32(ref accLow, ref accHigh, ref input, length - 16, length - 32, SecretSizeMinBytes - MidSizeLastOffset - 16);
        FinishMid(accLow, accHigh, length, out low64, out high64);
    }
}
