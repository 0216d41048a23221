// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, init ~0, final xor ~0), so
// Compute("123456789") == 0xE3069283. Guarantees: Append(Compute(a), b) == Compute(a + b);
// the SSE4.2 / ARMv8 CRC instructions and the table give the same value for every input;
// Combine(Compute(a), Compute(b), b.Length) == Compute(a + b) without touching the bytes (the
// zlib method: multiply by x^(8 * length) modulo the polynomial); nothing is allocated after
// the tables are built once.
// Speed: where the CPU has carry-less multiplication on 512-bit vectors (VPCLMULQDQ with
// AVX-512), inputs of 256 bytes and more are folded: sixteen 128-bit lanes in four vectors each
// multiply their bits by x^2048 modulo the polynomial (two multiplications per lane, by constants
// computed here with MultiplyModP, not tables from elsewhere) and add the next 256 bytes; the lanes
// then fold into one, whose 16 bytes the CRC instruction finishes (a 4 KiB chunk in about half the
// time of the three streams below: 68 ns against 133). Otherwise, with the CRC instruction,
// inputs of 768 bytes and more run three streams at once (rounds of 3 x 1344 bytes, then
// 3 x 256), joined by multiplying the earlier streams' registers by x^(8 * stream length) through
// 4 x 256-entry tables: the instruction's 3-cycle latency no longer bounds the speed.
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using ArmCrc32 = System.Runtime.Intrinsics.Arm.Crc32;

namespace Target.Dedup.Hashing;

public static class Crc32C
{
    private const uint ReflectedPolynomial = 0x82F63B78;

    private static readonly uint[] s_table = BuildTable();

    /// <summary>x^(2^n) modulo the polynomial, for n = 0..31 (reflected; x^0 is the top bit).</summary>
    private static readonly uint[] s_powers = BuildPowers();

    internal static bool IsHardwareAccelerated => Sse42.X64.IsSupported || ArmCrc32.Arm64.IsSupported;

    /// <summary>Whether inputs of <see cref="FoldMinimumBytes"/> and more are folded with 512-bit carry-less multiplication.</summary>
    internal static bool CanFold => Sse42.X64.IsSupported && Pclmulqdq.V512.IsSupported && Avx512F.IsSupported;

    public static uint Compute(ReadOnlySpan<byte> data) => Append(0, data);

    /// <summary>Continues <paramref name="crc"/>, a finished CRC-32C of earlier bytes (0 for none), over <paramref name="data"/>.</summary>
    public static uint Append(uint crc, ReadOnlySpan<byte> data) =>
        IsHardwareAccelerated ? AppendHardware(crc, data) : AppendSoftware(crc, data);

    private const int LongStreamBytes = 1344;
    private const int ShortStreamBytes = 256;
    private static readonly uint[] s_shiftLong = BuildShiftTable(LongStreamBytes);
    private static readonly uint[] s_shiftShort = BuildShiftTable(ShortStreamBytes);

    internal static uint AppendHardware(uint crc, ReadOnlySpan<byte> data) => AppendInstructions(crc, data, fold: CanFold);

    /// <summary>The CRC instruction path, folding inputs of <see cref="FoldMinimumBytes"/> and more when <paramref name="fold"/> (which needs <see cref="CanFold"/>).</summary>
    internal static uint AppendInstructions(uint crc, ReadOnlySpan<byte> data, bool fold)
    {
        uint state = ~crc;
        ref byte p = ref MemoryMarshal.GetReference(data);
        nuint length = (nuint)data.Length;
        nuint i = 0;
        if (Sse42.X64.IsSupported)
        {
            ulong wide = state;
            if (fold && length >= FoldMinimumBytes)
            {
                i = length & ~(nuint)(FoldBlockBytes - 1);
                wide = Fold(state, ref p, i);
            }
            else if (length >= 3 * ShortStreamBytes)
            {
                while (length - i >= 3 * LongStreamBytes)
                {
                    wide = ThreeStreams(wide, ref Unsafe.Add(ref p, i), LongStreamBytes, s_shiftLong);
                    i += 3 * LongStreamBytes;
                }
                while (length - i >= 3 * ShortStreamBytes)
                {
                    wide = ThreeStreams(wide, ref Unsafe.Add(ref p, i), ShortStreamBytes, s_shiftShort);
                    i += 3 * ShortStreamBytes;
                }
            }
            nuint words = (length - i) / 8;
            for (nuint end = i + words * 8; i < end; i += 8)
                wide = Sse42.X64.Crc32(wide, Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref p, i)));
            state = (uint)wide;
            for (; i < length; i++)
                state = Sse42.Crc32(state, Unsafe.Add(ref p, i));
        }
        else if (ArmCrc32.Arm64.IsSupported)
        {
            nuint words = length / 8;
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

    private const int FoldMinimumBytes = 256;
    private const int FoldBlockBytes = 64;

    /// <summary>
    /// Per 128-bit lane, the constants that multiply the lane by x^D modulo the polynomial: its first
    /// (low) qword holds the higher-degree half, so it takes x^(D + 64), the second x^D; each is
    /// x^(n - 1) mod P in the reflected 64-bit form, since a carry-less product of two reflected
    /// operands comes out multiplied by x. D = 2048 bits (four vectors ahead), 512 (one vector
    /// ahead), and per lane 384, 256, 128 (to the last lane, which stays as it is).
    /// </summary>
    private static readonly Vector512<ulong> s_fold2048 = FoldConstants(2048, 2048, 2048, 2048);
    private static readonly Vector512<ulong> s_fold512 = FoldConstants(512, 512, 512, 512);
    private static readonly Vector512<ulong> s_foldLanes = FoldConstants(384, 256, 128, 0);

    private static Vector512<ulong> FoldConstants(int d0, int d1, int d2, int d3)
    {
        static ulong Reflected(int n) => (ulong)PowerOfX(n, 0) << 32;
        static (ulong High, ulong Low) Lane(int d) => d == 0 ? (0, 0) : (Reflected(d + 63), Reflected(d - 1));
        var (h0, l0) = Lane(d0);
        var (h1, l1) = Lane(d1);
        var (h2, l2) = Lane(d2);
        var (h3, l3) = Lane(d3);
        return Vector512.Create(h0, l0, h1, l1, h2, l2, h3, l3);
    }

    /// <summary>Each lane of <paramref name="x"/> multiplied by its x^D (<paramref name="k"/>) modulo the polynomial, plus <paramref name="next"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<ulong> FoldInto(Vector512<ulong> x, Vector512<ulong> k, Vector512<ulong> next) =>
        Avx512F.TernaryLogic(Pclmulqdq.V512.CarrylessMultiply(x, k, 0x00), Pclmulqdq.V512.CarrylessMultiply(x, k, 0x11), next, 0x96);

    /// <summary>
    /// The raw register after <paramref name="length"/> bytes (a multiple of 64, at least 256) from
    /// <paramref name="p"/>, from register <paramref name="state"/>: the register is added to the
    /// first 4 bytes, the bytes folded to 16 congruent ones (same remainder at the same distance from
    /// the end), and those run through the CRC instruction from 0.
    /// </summary>
    private static ulong Fold(uint state, ref byte p, nuint length)
    {
        ref ulong q = ref Unsafe.As<byte, ulong>(ref p);
        Vector512<ulong> x0 = Vector512.LoadUnsafe(ref q) ^ Vector512.CreateScalar((ulong)state);
        Vector512<ulong> x1 = Vector512.LoadUnsafe(ref q, 8);
        Vector512<ulong> x2 = Vector512.LoadUnsafe(ref q, 16);
        Vector512<ulong> x3 = Vector512.LoadUnsafe(ref q, 24);
        nuint words = length / 8, i = 32;
        Vector512<ulong> k = s_fold2048;
        for (; words - i >= 32; i += 32)
        {
            x0 = FoldInto(x0, k, Vector512.LoadUnsafe(ref q, i));
            x1 = FoldInto(x1, k, Vector512.LoadUnsafe(ref q, i + 8));
            x2 = FoldInto(x2, k, Vector512.LoadUnsafe(ref q, i + 16));
            x3 = FoldInto(x3, k, Vector512.LoadUnsafe(ref q, i + 24));
        }
        k = s_fold512;
        Vector512<ulong> x = FoldInto(FoldInto(FoldInto(x0, k, x1), k, x2), k, x3);
        for (; i < words; i += 8) x = FoldInto(x, k, Vector512.LoadUnsafe(ref q, i));
        Vector512<ulong> f = FoldInto(x, s_foldLanes, Vector512<ulong>.Zero);
        Vector128<ulong> last = f.GetLower().GetLower() ^ f.GetLower().GetUpper() ^ f.GetUpper().GetLower() ^ x.GetUpper().GetUpper();
        return Sse42.X64.Crc32(Sse42.X64.Crc32(0, last.GetElement(0)), last.GetElement(1));
    }

    /// <summary>
    /// The raw register after 3 x <paramref name="streamBytes"/> bytes from <paramref name="p"/>: the
    /// three thirds run as independent streams (the later two from 0), then, CRC being linear,
    /// R(r, A + B) = R(0, B) xor r * x^(8 * |B|) joins them.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong ThreeStreams(ulong c0, ref byte p, int streamBytes, uint[] shift)
    {
        ulong c1 = 0, c2 = 0;
        nuint n = (nuint)streamBytes;
        for (nuint j = 0; j < n; j += 8)
        {
            c0 = Sse42.X64.Crc32(c0, Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref p, j)));
            c1 = Sse42.X64.Crc32(c1, Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref p, n + j)));
            c2 = Sse42.X64.Crc32(c2, Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref p, 2 * n + j)));
        }
        c0 = Shift(shift, (uint)c0) ^ c1;
        return Shift(shift, (uint)c0) ^ c2;
    }

    /// <summary>r * x^(8 * n) modulo the polynomial through n's table: one lookup per byte of r (multiplication by a constant is linear).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static uint Shift(uint[] table, uint r)
    {
        ref uint t = ref MemoryMarshal.GetArrayDataReference(table);
        return Unsafe.Add(ref t, (int)(r & 0xFF)) ^ Unsafe.Add(ref t, 256 + (int)((r >> 8) & 0xFF))
            ^ Unsafe.Add(ref t, 512 + (int)((r >> 16) & 0xFF)) ^ Unsafe.Add(ref t, 768 + (int)(r >> 24));
    }

    private static uint[] BuildShiftTable(long bytes)
    {
        uint power = PowerOfX(bytes, 3);
        var table = new uint[4 * 256];
        for (int k = 0; k < 4; k++)
            for (uint v = 0; v < 256; v++)
                table[k * 256 + (int)v] = MultiplyModP(power, v << (8 * k));
        return table;
    }

    internal static uint AppendSoftware(uint crc, ReadOnlySpan<byte> data)
    {
        uint state = ~crc;
        uint[] table = s_table;
        foreach (byte b in data)
            state = table[(byte)(state ^ b)] ^ (state >> 8);
        return ~state;
    }

    /// <summary>The CRC-32C of a + b from the CRC-32C of a, of b, and b's length.</summary>
    public static uint Combine(uint crcA, uint crcB, long lengthB)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(lengthB);
        return MultiplyModP(PowerOfX(lengthB, 3), crcA) ^ crcB;
    }

    /// <summary>The operator Combine applies for b's length, as a table: build it once when every b has the same length.</summary>
    public static CrcShift ShiftFor(long lengthB)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(lengthB);
        return new CrcShift(BuildShiftTable(lengthB));
    }

    /// <summary>The CRC-32C of a + b, b of the length <paramref name="shift"/> was made for (four table lookups).</summary>
    public static uint Combine(uint crcA, uint crcB, CrcShift shift) => Shift(shift.Table, crcA) ^ crcB;

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

/// <summary>Multiplication by x^(8 * length) modulo the CRC-32C polynomial, as 4 x 256 entries: what combining a CRC with one over that many bytes needs.</summary>
public sealed class CrcShift
{
    internal CrcShift(uint[] table) => Table = table;

    internal uint[] Table { get; }
}
