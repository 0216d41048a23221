// The journal: a log of batches. A batch is one aligned write: header sectors holding typed
// records, then the data sectors of the new chunks it introduces.
//   header: magic u32 | headerCrc u32 | seq u64 | epoch u64 | poolTag u64 | headerBlocks u32 |
//           dataBlocks u32 | recordBytes u32 | nextSegment u32 | dataCrc u32 | prevHeaderCrc u32 |
//           reserved -> 64 bytes
//   records follow, each: type u8 then a fixed layout per type (names are variable length).
// headerCrc covers the header sectors (with the field zeroed); dataCrc is the CRC32C of the
// data sectors; prevHeaderCrc is the headerCrc of the batch before it in the log (0 for the
// first), so the batches form a chain. Replay accepts a batch only when magic, pool tag,
// sequence, both CRCs and the chain link match, so a torn or stale batch ends the log — also a
// stale batch left beyond the head by an earlier run whose log was cut short (a lost write).
using System.Buffers.Binary;
using System.Text;
using Target.Dedup.Hashing;

namespace Target.Dedup.Format;

public enum RecordType : byte
{
    NewChunk = 1,
    Map = 2,
    MapRange = 3,
    CreateVolume = 4,
    DeleteVolume = 5,
    ResizeVolume = 6,
    CopyRange = 7,
    /// <summary>The cleaner moved a live chunk: its bytes are in this batch's data at DataIndex.</summary>
    MoveChunk = 8,
    /// <summary>
    /// The data of this batch's MoveChunk records was written outside the batch, at Location (the
    /// cleaner's own segment, so long-lived data is kept apart from new writes): Blocks blocks with
    /// CRC32C Crc, written before the batch and checked by replay like the batch's own data.
    /// </summary>
    MovedData = 9,
}

public static class BatchHeader
{
    public const uint Magic = 0x4C544754; // "TGTL"
    public const int FixedBytes = 64;
    public const uint NoSegment = uint.MaxValue;

    public const int NewChunkBytes = 1 + 4 + 4 + 4 + Fingerprint.SizeBytes; // id, data index, crc, fp
    public const int MapBytes = 1 + 4 + 8 + 4;
    public const int MoveChunkBytes = 1 + 4 + 4;
    public const int MovedDataBytes = 1 + 4 + 4 + 4;
    public const int MapRangeBytes = 1 + 4 + 8 + 8 + 4;
    public const int CopyRangeBytes = 1 + 4 + 8 + 4 + 8 + 8;
    public const int DeleteVolumeBytes = 1 + 4;
    public const int ResizeVolumeBytes = 1 + 4 + 8;
    public const int MaxNameBytes = 255;
    public const int CreateVolumeMaxBytes = 1 + 4 + 16 + 8 + 4 + 1 + MaxNameBytes;

    public static int HeaderBlocks(int recordBytes) => (FixedBytes + recordBytes + Superblock.ChunkBytes - 1) / Superblock.ChunkBytes;

    public static void WriteFixed(Span<byte> header, ulong seq, ulong epoch, ulong poolTag, int headerBlocks, int dataBlocks, int recordBytes, uint nextSegment, uint dataCrc, uint previousHeaderCrc)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(header, Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(header[4..], 0);
        BinaryPrimitives.WriteUInt64LittleEndian(header[8..], seq);
        BinaryPrimitives.WriteUInt64LittleEndian(header[16..], epoch);
        BinaryPrimitives.WriteUInt64LittleEndian(header[24..], poolTag);
        BinaryPrimitives.WriteInt32LittleEndian(header[32..], headerBlocks);
        BinaryPrimitives.WriteInt32LittleEndian(header[36..], dataBlocks);
        BinaryPrimitives.WriteInt32LittleEndian(header[40..], recordBytes);
        BinaryPrimitives.WriteUInt32LittleEndian(header[44..], nextSegment);
        BinaryPrimitives.WriteUInt32LittleEndian(header[48..], dataCrc);
        BinaryPrimitives.WriteUInt32LittleEndian(header[52..], previousHeaderCrc);
        header[56..FixedBytes].Clear();
    }

    /// <summary>Seals the header sectors: computes and stores headerCrc.</summary>
    public static void Seal(Span<byte> headerSectors)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(headerSectors[4..], 0);
        BinaryPrimitives.WriteUInt32LittleEndian(headerSectors[4..], Crc32C.Compute(headerSectors));
    }

    public readonly record struct Info(ulong Seq, ulong Epoch, int HeaderBlocks, int DataBlocks, int RecordBytes, uint NextSegment, uint DataCrc, uint PreviousHeaderCrc, uint HeaderCrc);

    /// <summary>Checks the first sector's fixed fields (not the CRC, which needs all header sectors).</summary>
    public static bool TryReadFixed(ReadOnlySpan<byte> first, ulong poolTag, out Info info)
    {
        info = default;
        if (BinaryPrimitives.ReadUInt32LittleEndian(first) != Magic) return false;
        if (BinaryPrimitives.ReadUInt64LittleEndian(first[24..]) != poolTag) return false;
        int headerBlocks = BinaryPrimitives.ReadInt32LittleEndian(first[32..]);
        int dataBlocks = BinaryPrimitives.ReadInt32LittleEndian(first[36..]);
        int recordBytes = BinaryPrimitives.ReadInt32LittleEndian(first[40..]);
        if (headerBlocks < 1 || dataBlocks < 0 || recordBytes < 0 || HeaderBlocks(recordBytes) != headerBlocks) return false;
        info = new Info(
            BinaryPrimitives.ReadUInt64LittleEndian(first[8..]),
            BinaryPrimitives.ReadUInt64LittleEndian(first[16..]),
            headerBlocks, dataBlocks, recordBytes,
            BinaryPrimitives.ReadUInt32LittleEndian(first[44..]),
            BinaryPrimitives.ReadUInt32LittleEndian(first[48..]),
            BinaryPrimitives.ReadUInt32LittleEndian(first[52..]),
            BinaryPrimitives.ReadUInt32LittleEndian(first[4..]));
        return true;
    }

    public static bool CrcMatches(ReadOnlySpan<byte> headerSectors)
    {
        uint stored = BinaryPrimitives.ReadUInt32LittleEndian(headerSectors[4..]);
        uint crc = Crc32C.Append(0, headerSectors[..4]);
        Span<byte> zero = stackalloc byte[4];
        zero.Clear();
        crc = Crc32C.Append(crc, zero);
        crc = Crc32C.Append(crc, headerSectors[8..]);
        return crc == stored;
    }
}

/// <summary>Appends records to a header buffer.</summary>
public ref struct RecordWriter
{
    private readonly Span<byte> _buffer;
    private int _position;

    public RecordWriter(Span<byte> buffer)
    {
        _buffer = buffer;
        _position = 0;
    }

    public readonly int Length => _position;

    public readonly int Remaining => _buffer.Length - _position;

    public void NewChunk(uint id, int dataIndex, uint crc, Fingerprint fp)
    {
        Span<byte> s = Take(BatchHeader.NewChunkBytes);
        s[0] = (byte)RecordType.NewChunk;
        BinaryPrimitives.WriteUInt32LittleEndian(s[1..], id);
        BinaryPrimitives.WriteInt32LittleEndian(s[5..], dataIndex);
        BinaryPrimitives.WriteUInt32LittleEndian(s[9..], crc);
        fp.WriteTo(s[13..]);
    }

    public void MoveChunk(uint id, int dataIndex)
    {
        Span<byte> s = Take(BatchHeader.MoveChunkBytes);
        s[0] = (byte)RecordType.MoveChunk;
        BinaryPrimitives.WriteUInt32LittleEndian(s[1..], id);
        BinaryPrimitives.WriteInt32LittleEndian(s[5..], dataIndex);
    }

    public void MovedData(uint location, int blocks, uint crc)
    {
        Span<byte> s = Take(BatchHeader.MovedDataBytes);
        s[0] = (byte)RecordType.MovedData;
        BinaryPrimitives.WriteUInt32LittleEndian(s[1..], location);
        BinaryPrimitives.WriteInt32LittleEndian(s[5..], blocks);
        BinaryPrimitives.WriteUInt32LittleEndian(s[9..], crc);
    }

    public void Map(uint volumeId, long block, uint chunkId)
    {
        Span<byte> s = Take(BatchHeader.MapBytes);
        s[0] = (byte)RecordType.Map;
        BinaryPrimitives.WriteUInt32LittleEndian(s[1..], volumeId);
        BinaryPrimitives.WriteInt64LittleEndian(s[5..], block);
        BinaryPrimitives.WriteUInt32LittleEndian(s[13..], chunkId);
    }

    public void MapRange(uint volumeId, long block, long count, uint value)
    {
        Span<byte> s = Take(BatchHeader.MapRangeBytes);
        s[0] = (byte)RecordType.MapRange;
        BinaryPrimitives.WriteUInt32LittleEndian(s[1..], volumeId);
        BinaryPrimitives.WriteInt64LittleEndian(s[5..], block);
        BinaryPrimitives.WriteInt64LittleEndian(s[13..], count);
        BinaryPrimitives.WriteUInt32LittleEndian(s[21..], value);
    }

    public void CopyRange(uint sourceVolume, long sourceBlock, uint destinationVolume, long destinationBlock, long count)
    {
        Span<byte> s = Take(BatchHeader.CopyRangeBytes);
        s[0] = (byte)RecordType.CopyRange;
        BinaryPrimitives.WriteUInt32LittleEndian(s[1..], sourceVolume);
        BinaryPrimitives.WriteInt64LittleEndian(s[5..], sourceBlock);
        BinaryPrimitives.WriteUInt32LittleEndian(s[13..], destinationVolume);
        BinaryPrimitives.WriteInt64LittleEndian(s[17..], destinationBlock);
        BinaryPrimitives.WriteInt64LittleEndian(s[25..], count);
    }

    public void CreateVolume(uint volumeId, Guid uuid, long sizeBytes, int logicalBlockSize, string name)
    {
        int nameBytes = Encoding.UTF8.GetByteCount(name);
        if (nameBytes > BatchHeader.MaxNameBytes) throw new ArgumentException("volume name too long");
        Span<byte> s = Take(1 + 4 + 16 + 8 + 4 + 1 + nameBytes);
        s[0] = (byte)RecordType.CreateVolume;
        BinaryPrimitives.WriteUInt32LittleEndian(s[1..], volumeId);
        uuid.TryWriteBytes(s[5..21]);
        BinaryPrimitives.WriteInt64LittleEndian(s[21..], sizeBytes);
        BinaryPrimitives.WriteInt32LittleEndian(s[29..], logicalBlockSize);
        s[33] = (byte)nameBytes;
        Encoding.UTF8.GetBytes(name, s[34..]);
    }

    public void DeleteVolume(uint volumeId)
    {
        Span<byte> s = Take(BatchHeader.DeleteVolumeBytes);
        s[0] = (byte)RecordType.DeleteVolume;
        BinaryPrimitives.WriteUInt32LittleEndian(s[1..], volumeId);
    }

    public void ResizeVolume(uint volumeId, long sizeBytes)
    {
        Span<byte> s = Take(BatchHeader.ResizeVolumeBytes);
        s[0] = (byte)RecordType.ResizeVolume;
        BinaryPrimitives.WriteUInt32LittleEndian(s[1..], volumeId);
        BinaryPrimitives.WriteInt64LittleEndian(s[5..], sizeBytes);
    }

    private Span<byte> Take(int length)
    {
        if (_position + length > _buffer.Length) throw new InvalidOperationException("batch header full");
        Span<byte> s = _buffer.Slice(_position, length);
        _position += length;
        return s;
    }
}

/// <summary>One decoded record.</summary>
public struct LogRecord
{
    public RecordType Type;
    public uint ChunkId;
    public int DataIndex;
    public uint Crc;
    public Fingerprint Fingerprint;
    public uint VolumeId;
    public long Block;
    public long Count;
    public uint Value;
    public uint DestinationVolumeId;
    public long DestinationBlock;
    public Guid Uuid;
    public long SizeBytes;
    public int LogicalBlockSize;
    public string? Name;
}

public ref struct RecordReader
{
    private readonly ReadOnlySpan<byte> _buffer;
    private int _position;

    public RecordReader(ReadOnlySpan<byte> records)
    {
        _buffer = records;
        _position = 0;
    }

    /// <summary>Reads the next record; false at the end. Throws InvalidDataException on a malformed record.</summary>
    public bool Next(out LogRecord r)
    {
        r = default;
        if (_position >= _buffer.Length) return false;
        ReadOnlySpan<byte> s = _buffer[_position..];
        r.Type = (RecordType)s[0];
        int length;
        switch (r.Type)
        {
            case RecordType.NewChunk:
                length = Need(s, BatchHeader.NewChunkBytes);
                r.ChunkId = BinaryPrimitives.ReadUInt32LittleEndian(s[1..]);
                r.DataIndex = BinaryPrimitives.ReadInt32LittleEndian(s[5..]);
                r.Crc = BinaryPrimitives.ReadUInt32LittleEndian(s[9..]);
                r.Fingerprint = Fingerprint.ReadFrom(s[13..]);
                break;
            case RecordType.MoveChunk:
                length = Need(s, BatchHeader.MoveChunkBytes);
                r.ChunkId = BinaryPrimitives.ReadUInt32LittleEndian(s[1..]);
                r.DataIndex = BinaryPrimitives.ReadInt32LittleEndian(s[5..]);
                break;
            case RecordType.MovedData:
                length = Need(s, BatchHeader.MovedDataBytes);
                r.Value = BinaryPrimitives.ReadUInt32LittleEndian(s[1..]);
                r.Count = BinaryPrimitives.ReadInt32LittleEndian(s[5..]);
                r.Crc = BinaryPrimitives.ReadUInt32LittleEndian(s[9..]);
                break;
            case RecordType.Map:
                length = Need(s, BatchHeader.MapBytes);
                r.VolumeId = BinaryPrimitives.ReadUInt32LittleEndian(s[1..]);
                r.Block = BinaryPrimitives.ReadInt64LittleEndian(s[5..]);
                r.ChunkId = BinaryPrimitives.ReadUInt32LittleEndian(s[13..]);
                break;
            case RecordType.MapRange:
                length = Need(s, BatchHeader.MapRangeBytes);
                r.VolumeId = BinaryPrimitives.ReadUInt32LittleEndian(s[1..]);
                r.Block = BinaryPrimitives.ReadInt64LittleEndian(s[5..]);
                r.Count = BinaryPrimitives.ReadInt64LittleEndian(s[13..]);
                r.Value = BinaryPrimitives.ReadUInt32LittleEndian(s[21..]);
                break;
            case RecordType.CopyRange:
                length = Need(s, BatchHeader.CopyRangeBytes);
                r.VolumeId = BinaryPrimitives.ReadUInt32LittleEndian(s[1..]);
                r.Block = BinaryPrimitives.ReadInt64LittleEndian(s[5..]);
                r.DestinationVolumeId = BinaryPrimitives.ReadUInt32LittleEndian(s[13..]);
                r.DestinationBlock = BinaryPrimitives.ReadInt64LittleEndian(s[17..]);
                r.Count = BinaryPrimitives.ReadInt64LittleEndian(s[25..]);
                break;
            case RecordType.CreateVolume:
                Need(s, 34);
                int nameBytes = s[33];
                length = Need(s, 34 + nameBytes);
                r.VolumeId = BinaryPrimitives.ReadUInt32LittleEndian(s[1..]);
                r.Uuid = new Guid(s[5..21]);
                r.SizeBytes = BinaryPrimitives.ReadInt64LittleEndian(s[21..]);
                r.LogicalBlockSize = BinaryPrimitives.ReadInt32LittleEndian(s[29..]);
                r.Name = Encoding.UTF8.GetString(s.Slice(34, nameBytes));
                break;
            case RecordType.DeleteVolume:
                length = Need(s, BatchHeader.DeleteVolumeBytes);
                r.VolumeId = BinaryPrimitives.ReadUInt32LittleEndian(s[1..]);
                break;
            case RecordType.ResizeVolume:
                length = Need(s, BatchHeader.ResizeVolumeBytes);
                r.VolumeId = BinaryPrimitives.ReadUInt32LittleEndian(s[1..]);
                r.SizeBytes = BinaryPrimitives.ReadInt64LittleEndian(s[5..]);
                break;
            default:
                throw new InvalidDataException($"unknown journal record type {(byte)r.Type}");
        }
        _position += length;
        return true;
    }

    private static int Need(ReadOnlySpan<byte> s, int length)
    {
        if (s.Length < length) throw new InvalidDataException("truncated journal record");
        return length;
    }
}
