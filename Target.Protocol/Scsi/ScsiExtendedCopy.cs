// EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.18): block-to-block copies inside
// this logical unit, done by reference through IBlockVolume.CopyAsync (the destination shares the
// source's chunks), or through a bounce buffer when the ranges overlap or the volume cannot copy
// by reference.
//
// Invariants:
// - The whole parameter list (header, every CSCD and segment descriptor, every range) is checked
//   before the first block moves; a segment that fails midway ends the command with COPY ABORTED
//   and the segments done so far stay done (SPC-4 allows it and reports them).
// - Only CSCD identification descriptors naming this logical unit (its NAA designator) are accepted.
using System.Buffers;
using System.Buffers.Binary;
using Target.Dedup;

namespace Target.Protocol.Scsi;

public sealed partial class ScsiLogicalUnit
{
    /// <summary>EXTENDED COPY service action 00h: the LID1 form (one-byte list identifier).</summary>
    private const byte ExtendedCopyLid1 = 0x00;

    private const int XcopyHeaderBytes = 16;
    private const byte CscdIdentification = 0xE4;
    private const int CscdBytes = 32;
    private const byte SegmentBlockToBlock = 0x02;
    private const int SegmentBlockToBlockBytes = 28;

    /// <summary>Limits reported in the operating parameters and enforced here.</summary>
    public const int XcopyCscdDescriptorsMax = 4;
    public const int XcopySegmentDescriptorsMax = 64;
    public const int XcopyDescriptorListBytesMax = XcopyCscdDescriptorsMax * CscdBytes + XcopySegmentDescriptorsMax * SegmentBlockToBlockBytes;

    /// <summary>A segment copies at most 65535 blocks (its 16-bit count); this bounds it in bytes too.</summary>
    public const int XcopySegmentBytesMax = ScsiLimits.MaxTransferBytes;

    /// <summary>Copy results kept per logical unit for RECEIVE COPY RESULTS (oldest dropped first).</summary>
    private const int CopyResultsKept = 64;

    private readonly record struct CopyResult(string InitiatorPort, byte ListId, byte Status, ushort SegmentsProcessed, long BytesCopied);

    private readonly List<CopyResult> _copyResults = new();

    private bool ExtendedCopySupported => true;

    private async ValueTask ExtendedCopyAsync(ScsiTask task, CancellationToken ct)
    {
        ReadOnlySpan<byte> cdb = task.Cdb;
        if ((cdb[1] & 0x1F) != ExtendedCopyLid1)
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, 1, 4);
            return;
        }
        uint parameterLength = BinaryPrimitives.ReadUInt32BigEndian(cdb.Slice(10));
        if (parameterLength == 0) return;   // no copy (SPC-4 6.4.1)
        if (WriteProtected)
        {
            WriteProtectedError(task);
            return;
        }
        if (parameterLength < XcopyHeaderBytes || parameterLength > ScsiLimits.MaxParameterListBytes || task.DataOutLength < parameterLength)
        {
            IllegalRequest(task, Asc.ParameterListLengthError, 10);
            return;
        }
        if (!TryParseCopy(task, task.DataOutSpan.Slice(0, (int)parameterLength), out byte listId, out int listIdUsage, out List<(long Source, long Destination, long Length)> segments))
            return;

        string port = task.Nexus.InitiatorPortName;
        long copied = 0;
        ushort done = 0;
        try
        {
            foreach ((long source, long destination, long length) in segments)
            {
                await CopySegmentAsync(source, destination, length, ct).ConfigureAwait(false);
                copied += length;
                done++;
            }
        }
        catch (StorageException ex)
        {
            RememberCopy(listIdUsage, new CopyResult(port, listId, 0x02, done, copied));
            _logger.LogCopyFailed(TargetName, done, ex.Message);
            task.CheckCondition(new ScsiSenseInfo(SenseKey.CopyAborted, ProtocolErrors.Classify(ex) == StorageErrorKind.NoSpace
                ? Asc.SpaceAllocationFailedWriteProtect
                : Asc.UnrecoveredReadError), _descriptorSense);
            return;
        }
        RememberCopy(listIdUsage, new CopyResult(port, listId, 0x01, done, copied));
    }

    /// <summary>Checks a LID1 parameter list; false when the task already holds the error.</summary>
    private bool TryParseCopy(ScsiTask task, ReadOnlySpan<byte> list, out byte listId, out int listIdUsage, out List<(long, long, long)> segments)
    {
        segments = new List<(long, long, long)>();
        listId = list[0];
        listIdUsage = (list[1] >> 3) & 0x03;
        int cscdBytes = BinaryPrimitives.ReadUInt16BigEndian(list.Slice(2));
        uint segmentBytes = BinaryPrimitives.ReadUInt32BigEndian(list.Slice(8));
        uint inlineBytes = BinaryPrimitives.ReadUInt32BigEndian(list.Slice(12));
        if (listIdUsage == 1 || (listIdUsage == 3 && listId != 0))
        {
            IllegalParameter(task, Asc.InvalidFieldInParameterList, listIdUsage == 1 ? 1 : 0);
            return false;
        }
        if ((long)XcopyHeaderBytes + cscdBytes + segmentBytes + inlineBytes > list.Length)
        {
            IllegalRequest(task, Asc.ParameterListLengthError, 10);
            return false;
        }
        if (inlineBytes != 0)
        {
            IllegalParameter(task, Asc.InvalidFieldInParameterList, 12);   // no inline data (maximum inline data length 0)
            return false;
        }
        if ((long)cscdBytes + segmentBytes > XcopyDescriptorListBytesMax)
        {
            IllegalRequest(task, Asc.ParameterListLengthError, 10);   // beyond MAXIMUM DESCRIPTOR LIST LENGTH
            return false;
        }
        if (cscdBytes > XcopyCscdDescriptorsMax * CscdBytes)
        {
            IllegalParameter(task, Asc.TooManyTargetDescriptors, 2);
            return false;
        }
        if (segmentBytes > XcopySegmentDescriptorsMax * SegmentBlockToBlockBytes)
        {
            IllegalParameter(task, Asc.TooManySegmentDescriptors, 8);
            return false;
        }

        // CSCD descriptors: identification descriptors naming this logical unit.
        Span<byte> naa = stackalloc byte[16];
        WriteNaaDesignator(naa);
        int cscdCount = 0;
        for (int at = XcopyHeaderBytes; at < XcopyHeaderBytes + cscdBytes; at += CscdBytes, cscdCount++)
        {
            if (list[at] != CscdIdentification)
            {
                IllegalParameter(task, Asc.UnsupportedTargetDescriptorType, at);
                return false;
            }
            if (at + CscdBytes > XcopyHeaderBytes + cscdBytes)
            {
                IllegalRequest(task, Asc.ParameterListLengthError, 10);
                return false;
            }
            ReadOnlySpan<byte> d = list.Slice(at, CscdBytes);
            // LU ID TYPE (bits 7-6 of byte 1) is ignored: the designator alone names the logical unit.
            bool nullDevice = (d[1] & 0x20) != 0;
            int deviceType = d[1] & 0x1F;
            int designatorBytes = d[7];
            if (deviceType != 0 || designatorBytes > 20)
            {
                IllegalParameter(task, Asc.InvalidFieldInParameterList, at + 1);
                return false;
            }
            bool ours = !nullDevice && (d[5] & 0x0F) == 0x03 && designatorBytes == 16 && d.Slice(8, 16).SequenceEqual(naa);
            if (!ours)
            {
                task.CheckCondition(new ScsiSenseInfo(SenseKey.CopyAborted, Asc.CopyTargetDeviceNotReachable), _descriptorSense);
                return false;
            }
            int blockBytes = d[29] << 16 | d[30] << 8 | d[31];
            if (blockBytes != BlockBytes)
            {
                IllegalParameter(task, Asc.InvalidFieldInParameterList, at + 29);
                return false;
            }
        }

        // Segment descriptors: block device to block device.
        int end = XcopyHeaderBytes + cscdBytes + (int)segmentBytes;
        for (int at = XcopyHeaderBytes + cscdBytes; at < end;)
        {
            if (list[at] != SegmentBlockToBlock)
            {
                IllegalParameter(task, Asc.UnsupportedSegmentDescriptorType, at);
                return false;
            }
            if (at + 4 > end || BinaryPrimitives.ReadUInt16BigEndian(list.Slice(at + 2)) != SegmentBlockToBlockBytes - 4 || at + SegmentBlockToBlockBytes > end)
            {
                IllegalRequest(task, Asc.ParameterListLengthError, 10);
                return false;
            }
            ReadOnlySpan<byte> s = list.Slice(at, SegmentBlockToBlockBytes);
            int sourceIndex = BinaryPrimitives.ReadUInt16BigEndian(s.Slice(4));
            int destinationIndex = BinaryPrimitives.ReadUInt16BigEndian(s.Slice(6));
            if (sourceIndex >= cscdCount || destinationIndex >= cscdCount)
            {
                task.CheckCondition(new ScsiSenseInfo(SenseKey.CopyAborted, Asc.UnreachableCopyTarget), _descriptorSense);
                return false;
            }
            uint blocks = BinaryPrimitives.ReadUInt16BigEndian(s.Slice(10));
            ulong sourceLba = BinaryPrimitives.ReadUInt64BigEndian(s.Slice(12));
            ulong destinationLba = BinaryPrimitives.ReadUInt64BigEndian(s.Slice(20));
            if (!ScsiCdb.InRange(sourceLba, blocks, BlockCount) || !ScsiCdb.InRange(destinationLba, blocks, BlockCount))
            {
                // COPY ABORTED without an additional sense code, as initiators expect for a segment off the end.
                task.CheckCondition(new ScsiSenseInfo(SenseKey.CopyAborted, Asc.NoAdditionalSense), _descriptorSense);
                return false;
            }
            if (blocks > 0) segments.Add(((long)sourceLba << BlockShift, (long)destinationLba << BlockShift, (long)blocks << BlockShift));
            at += SegmentBlockToBlockBytes;
        }
        return true;
    }

    private async ValueTask CopySegmentAsync(long source, long destination, long length, CancellationToken ct)
    {
        if (source == destination) return;
        bool overlap = source < destination + length && destination < source + length;
        if (!overlap && (Volume.Capabilities & VolumeCapabilities.CopyByReference) != 0)
        {
            await Volume.CopyAsync(source, Volume, destination, length, ct).ConfigureAwait(false);
            return;
        }
        // Overlapping ranges read the whole source first (a segment is at most XcopySegmentBytesMax).
        byte[] buffer = ArrayPool<byte>.Shared.Rent((int)length);
        try
        {
            await Volume.ReadAsync(source, buffer.AsMemory(0, (int)length), ct).ConfigureAwait(false);
            await Volume.WriteAsync(destination, buffer.AsMemory(0, (int)length), WriteFlags.None, ct).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>LIST ID USAGE 00b and 10b keep the copy's status for RECEIVE COPY RESULTS.</summary>
    private void RememberCopy(int listIdUsage, CopyResult result)
    {
        if (listIdUsage is not (0 or 2)) return;
        lock (_copyResults)
        {
            _copyResults.RemoveAll(r => r.ListId == result.ListId && string.Equals(r.InitiatorPort, result.InitiatorPort, StringComparison.OrdinalIgnoreCase));
            if (_copyResults.Count >= CopyResultsKept) _copyResults.RemoveAt(0);
            _copyResults.Add(result);
        }
    }

    private void ReceiveCopyResults(ScsiTask task)
    {
        ReadOnlySpan<byte> cdb = task.Cdb;
        byte action = (byte)(cdb[1] & 0x1F);
        byte listId = cdb[2];
        uint allocation = BinaryPrimitives.ReadUInt32BigEndian(cdb.Slice(10));
        string port = task.Nexus.InitiatorPortName;
        switch (action)
        {
            case ScsiServiceAction.CopyStatus:
            case ScsiServiceAction.FailedSegmentDetails:
                {
                    CopyResult? found = null;
                    lock (_copyResults)
                    {
                        foreach (CopyResult result in _copyResults)
                            if (result.ListId == listId && string.Equals(result.InitiatorPort, port, StringComparison.OrdinalIgnoreCase)) found = result;
                    }
                    if (found is not CopyResult copy)
                    {
                        IllegalRequest(task, Asc.InvalidFieldInCdb, 2);
                        return;
                    }
                    if (action == ScsiServiceAction.FailedSegmentDetails)
                    {
                        // Segments never fail partway with data held: nothing to detail (SPC-4 6.18.5).
                        Span<byte> details = task.AllocateDataIn(60).Span;
                        BinaryPrimitives.WriteUInt32BigEndian(details, 56);
                        details[56] = copy.Status == 0x01 ? (byte)ScsiStatus.Good : (byte)ScsiStatus.CheckCondition;
                        break;
                    }
                    Span<byte> data = task.AllocateDataIn(12).Span;
                    BinaryPrimitives.WriteUInt32BigEndian(data, 8);
                    data[4] = copy.Status;                                       // 01h completed, 02h completed with errors
                    BinaryPrimitives.WriteUInt16BigEndian(data.Slice(5), copy.SegmentsProcessed);
                    bool kibibytes = copy.BytesCopied > uint.MaxValue;
                    data[7] = kibibytes ? (byte)0xF1 : (byte)0x00;               // transfer count units: bytes or KiB
                    BinaryPrimitives.WriteUInt32BigEndian(data.Slice(8), (uint)(kibibytes ? copy.BytesCopied >> 10 : copy.BytesCopied));
                    break;
                }
            case ScsiServiceAction.OperatingParameters:
                {
                    ReadOnlySpan<byte> implemented = [SegmentBlockToBlock, CscdIdentification];
                    Span<byte> data = task.AllocateDataIn(44 + implemented.Length).Span;
                    BinaryPrimitives.WriteUInt32BigEndian(data, (uint)(40 + implemented.Length));
                    BinaryPrimitives.WriteUInt16BigEndian(data.Slice(8), XcopyCscdDescriptorsMax);
                    BinaryPrimitives.WriteUInt16BigEndian(data.Slice(10), XcopySegmentDescriptorsMax);
                    BinaryPrimitives.WriteUInt32BigEndian(data.Slice(12), XcopyDescriptorListBytesMax);
                    BinaryPrimitives.WriteUInt32BigEndian(data.Slice(16), XcopySegmentBytesMax);
                    BinaryPrimitives.WriteUInt32BigEndian(data.Slice(20), 0);      // maximum inline data length
                    BinaryPrimitives.WriteUInt32BigEndian(data.Slice(24), 0);      // held data limit
                    BinaryPrimitives.WriteUInt16BigEndian(data.Slice(34), 1);      // total concurrent copies
                    data[36] = 1;                                                  // maximum concurrent copies
                    data[37] = (byte)BlockShift;                                   // data segment granularity (log2 bytes)
                    data[43] = (byte)implemented.Length;
                    implemented.CopyTo(data.Slice(44));
                    break;
                }
            default:
                IllegalRequest(task, Asc.InvalidFieldInCdb, 1, 4);
                return;
        }
        task.TruncateDataIn((int)Math.Min(allocation, int.MaxValue));
    }
}

internal static partial class ScsiLogMessages
{
    [Microsoft.Extensions.Logging.LoggerMessage(Level = Microsoft.Extensions.Logging.LogLevel.Warning,
        Message = "scsi {Target}: EXTENDED COPY stopped after {Segments} segment(s): {Error}")]
    public static partial void LogCopyFailed(this Microsoft.Extensions.Logging.ILogger logger, string target, int segments, string error);
}
