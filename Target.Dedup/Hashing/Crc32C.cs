// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, init ~0, final xor ~0), so
// Compute("123456789") == 0xE3069283. Guarantees: Append(Compute(a), b) == Compute(a + b);
// the SSE4.2 / ARMv8 CRC instructions and the table give the same value for every input;
// Combine(Compute(a), Compute(b), b.Length) == Compute(a + b) without touching the bytes (the
// zlib method: multiply by x^(8 * length) modulo the polynomial); nothing is allocated after
// the tables are built once.
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;
using ArmCrc32 = System.Runtime.Intrinsics.Arm.Crc32;

namespace Target.Dedup.Hashing;

public static class Crc32C
{
    private const uint ReflectedPolynomial = 0x82F63B78;

    private static readonly uint[] s_table = BuildTable();

    internal static bool IsHardwareAccelerated => Sse42.X64.IsSupported || ArmCrc32.Arm64.IsSupported;

    public static uint Compute(ReadOnlySpan<byte> data) => Append(0, data);

    /// <summary>Continues <paramref name="crc"/>, a finished CRC-32C of earlier bytes (0 for none), over <paramref name="data"/>.</summary>
    public static uint Append(uint crc, ReadOnlySpan<byte> data) =>
        IsHardwareAccelerated ? AppendHardware(crc, data) : AppendSoftware(crc, data);

    internal static uint AppendHardware(uint crc, ReadOnlySpan<byte> data)
    {
        uint state = ~crc;
        ref byte p = ref MemoryMarshal.GetReference(data);
        nuint length = (nuint)data.Length;
        nuint words = length / 8;
        nuint i = 0;
        if (Sse42.X64.IsSupported)
        {
            ulong wide = state;
            for (; i < words * 8; i += 8)
                wide = Sse42.X64.Crc32(wide, Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref p, i)));
            state = (uint)wide;
            for (; i < length; i++)
                state = Sse42.Crc32(state, Unsafe.Add(ref p, i));
        }
        else if (ArmCrc32.Arm64.IsSupported)
        {
            for (; i < words * 8; i += 8)
                state = ArmCrc32.Arm64.ComputeCrc32C(state, Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref p, i)));
            for (; i < length; i++)
                state = ArmCrc32.ComputeCrc32C(state, Unsafe.Add(ref p, i));
        }
        else
        {
            throw new PlatformNotSupportedException("no CRC-32C instruction on this CPU");
        }
        return ~state;
    }

    internal static uint AppendSoftware(uint crc, ReadOnlySpan<byte> data)
    {
        uint state = ~crc;
        uint[] table = s_table;
        foreach (byte b in data)
            state = table[(byte)(state ^ b)] ^ (state >> 8);
        return ~state;
    }

    /// <summary>x^(2^n) modulo the polynomial, for n = 0..31 (reflected; x^0 is the top bit).</summary>
    private static readonly uint[] s_powers = BuildPowers();

    /// <summary>The CRC-32C of a + b from the CRC-32C of a, of b, and b's length.</summary>
    public static uint Combine(uint crcA, uint crcB, long lengthB) => Combine(crcA, crcB, ShiftFor(lengthB));

    /// <summary>The operator Combine applies for b's length: compute it once when every b has the same length.</summary>
    public static CrcShift ShiftFor(long lengthB)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(lengthB);
        return new CrcShift(PowerOfX(lengthB, 3));
    }

    /// <summary>The CRC-32C of a + b, b of the length <paramref name="shift"/> was made for.</summary>
    public static uint Combine(uint crcA, uint crcB, CrcShift shift) => MultiplyModP(shift.Power, crcA) ^ crcB;

    /// <summary>a * b modulo the polynomial, bit-reflected.</summary>
    private static uint MultiplyModP(uint a, uint b)
    {
        uint m = 1u << 31, product = 0;
        while (true)
        {
            if ((a & m) != 0)
            {
                product ^= b;
                if ((a & (m - 1)) == 0) return product;
            }
            m >>= 1;
            b = (b & 1) != 0 ? (b >> 1) ^ ReflectedPolynomial : b >> 1;
        }
    }

    /// <summary>x^(n * 2^k) modulo the polynomial.</summary>
    private static uint PowerOfX(long n, int k)
    {
        uint p = 1u << 31;
        while (n != 0)
        {
            if ((n & 1) != 0) p = MultiplyModP(s_powers[k & 31], p);
            n >>= 1;
            k++;
        }
        return p;
    }

    private static uint[] BuildPowers()
    {
        var powers = new uint[32];
        uint p = 1u << 30; // x^1
        for (int n = 0; n < 32; n++)
        {
            powers[n] = p;
            p = MultiplyModP(p, p);
        }
        return powers;
    }

    private static uint[] BuildTable()
    {
        var table = new uint[256];
        for (uint n = 0; n < 256; n++)
        {
            uint c = n;
            for (int bit = 0; bit < 8; bit++)
                c = (c & 1) != 0 ? (c >> 1) ^ ReflectedPolynomial : c >> 1;
            table[n] = c;
        }
        return table;
    }
}

/// <summary>x^(8 * length) modulo the CRC-32C polynomial: what combining a CRC with one over that many bytes needs.</summary>
public readonly record struct CrcShift(uint Power);
