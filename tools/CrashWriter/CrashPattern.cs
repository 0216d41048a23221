// Self-describing sectors: bytes 0..8 hold the writing operation's tag, 8..12 the sector's
// index within its 4 KiB chunk (so equal tags give equal chunks, which dedup shares), the rest
// is a pseudo-random fill derived from both. Shared by the writer and the verifier.
using System.Buffers.Binary;

public static class CrashPattern
{
    public const int SectorBytes = 512;
    public const int SharedTags = 8;
    public const string VolumeName = "crash";

    public static void Fill(Span<byte> sector, long tag, long indexInChunk)
    {
        BinaryPrimitives.WriteInt64LittleEndian(sector, tag);
        BinaryPrimitives.WriteInt32LittleEndian(sector[8..], (int)indexInChunk);
        ulong x = (ulong)(tag * 8 + indexInChunk) * 0x9E3779B97F4A7C15UL + 1;
        for (int i = 12; i + 8 <= sector.Length - 4; i += 8)
        {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            BinaryPrimitives.WriteUInt64LittleEndian(sector[i..], x);
        }
        BinaryPrimitives.WriteUInt32LittleEndian(sector[^4..], (uint)(x >> 11));
    }

    /// <summary>The tag that wrote this sector, 0 for an all-zero sector, -1 for bytes no write produced.</summary>
    public static long Decode(ReadOnlySpan<byte> sector, long indexInChunk)
    {
        if (!sector.ContainsAnyExcept((byte)0)) return 0;
        long tag = BinaryPrimitives.ReadInt64LittleEndian(sector);
        if (tag <= 0) return -1;
        Span<byte> expected = stackalloc byte[SectorBytes];
        Fill(expected, tag, indexInChunk);
        return expected.SequenceEqual(sector) ? tag : -1;
    }
}
