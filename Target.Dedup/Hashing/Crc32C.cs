// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, init ~0, final xor ~0), so
// Compute("123456789") == 0xE3069283. Guarantees: Append(Compute(a), b) == Compute(a + b);
// the SSE4.2 / ARMv8 CRC instructions and the table give the same value for every input;
// nothing is allocated after the table is built once.
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
