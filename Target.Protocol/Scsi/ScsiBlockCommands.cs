// SBC-3 data commands: READ/WRITE 6/10/12/16, VERIFY, WRITE AND VERIFY, COMPARE AND WRITE,
// ORWRITE, SYNCHRONIZE CACHE, PRE-FETCH, WRITE SAME, UNMAP, READ CAPACITY, GET LBA STATUS.
// Hot path (READ/WRITE): one range check, one volume call, no allocation beyond pooled buffers.
using System.Buffers;
using System.Buffers.Binary;
using Target.Dedup;

namespace Target.Protocol.Scsi;

public sealed partial class ScsiLogicalUnit
{
    /// <summary>Checks LBA range and size of a READ/WRITE-family command; false when the task already has its error.</summary>
    private bool CheckTransfer(ScsiTask task, ulong lba, uint blocks, int maxBytes)
    {
        byte opcode = task.CdbBuffer[0];
        if (!ScsiCdb.InRange(lba, blocks, BlockCount))
        {
            LbaOutOfRange(task);
            return false;
        }
        if ((ulong)blocks << BlockShift > (ulong)maxBytes)
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, ScsiCdb.LengthFieldOffset(opcode));
            return false;
        }
        return true;
    }

    /// <summary>
    /// Bytes a WRITE-family command actually writes: the whole blocks of data-out the initiator sent,
    /// at most what the CDB transfers. With less data-out than the CDB names (iSCSI EDTL below the
    /// transfer length) only the blocks received are written and the transport reports the rest as
    /// residual overflow (RFC 7143 11.4.5.1; tgt does the same and libiscsi's residual tests expect it).
    /// </summary>
    private int WritableBytes(ScsiTask task, int bytes)
    {
        task.CommandDataOutBytes = bytes;
        int available = Math.Min(task.DataOutLength, bytes);
        return available & ~(BlockBytes - 1);
    }

    /// <summary>The data-out buffer must hold what the CDB transfers; the transport already collected EDTL bytes.</summary>
    private bool CheckDataOut(ScsiTask task, long neededBytes)
    {
        if (task.DataOutLength >= neededBytes) return true;
        // The initiator announced less data than the CDB transfers (iSCSI "overflow" on a write).
        IllegalRequest(task, Asc.InvalidFieldInCdb, ScsiCdb.LengthFieldOffset(task.CdbBuffer[0]));
        return false;
    }

    // READ and WRITE are not async methods: they return the volume's own ValueTask, so no state
    // machine box is allocated when the I/O completes later (ExecuteAsync awaits it without one).
    private ValueTask ReadAsync(ScsiTask task, CancellationToken ct)
    {
        ReadOnlySpan<byte> cdb = task.Cdb;
        byte opcode = cdb[0];
        if (opcode != ScsiOpcode.Read6 && (cdb[1] & 0xE0) != 0)
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, 1, 7);   // RDPROTECT: no protection information
            return default;
        }
        ScsiCdb.TryDecodeLbaLength(cdb, out ulong lba, out uint blocks);
        if (!CheckTransfer(task, lba, blocks, ScsiLimits.MaxTransferBytes)) return default;
        if (blocks == 0) return default;
        int bytes = (int)(blocks << BlockShift);
        Memory<byte> data = task.AllocateDataIn(bytes, clear: false);
        return Volume.ReadAsync((long)lba << BlockShift, data, ct);
    }

    private ValueTask WriteAsync(ScsiTask task, CancellationToken ct)
    {
        ReadOnlySpan<byte> cdb = task.Cdb;
        byte opcode = cdb[0];
        bool fua = false;
        if (opcode != ScsiOpcode.Write6)
        {
            if ((cdb[1] & 0xE0) != 0)
            {
                IllegalRequest(task, Asc.InvalidFieldInCdb, 1, 7);   // WRPROTECT
                return default;
            }
            fua = (cdb[1] & 0x08) != 0;
        }
        ScsiCdb.TryDecodeLbaLength(cdb, out ulong lba, out uint blocks);
        if (WriteProtected)
        {
            WriteProtectedError(task);
            return default;
        }
        if (!CheckTransfer(task, lba, blocks, ScsiLimits.MaxTransferBytes)) return default;
        int bytes = WritableBytes(task, (int)(blocks << BlockShift));
        if (bytes == 0) return default;
        return Volume.WriteAsync((long)lba << BlockShift, task.DataOut.AsMemory(0, bytes), fua ? WriteFlags.Fua : WriteFlags.None, ct);
    }

    private async ValueTask WriteAndVerifyAsync(ScsiTask task, CancellationToken ct)
    {
        ReadOnlySpan<byte> cdb = task.Cdb;
        if ((cdb[1] & 0xE0) != 0)
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, 1, 7);
            return;
        }
        ScsiCdb.TryDecodeLbaLength(cdb, out ulong lba, out uint blocks);
        if (WriteProtected)
        {
            WriteProtectedError(task);
            return;
        }
        if (!CheckTransfer(task, lba, blocks, ScsiLimits.MaxTransferBytes)) return;
        int bytes = WritableBytes(task, (int)(blocks << BlockShift));
        if (bytes == 0) return;
        // The engine checks every chunk it stores (CRC32C on read-back); the write is made durable
        // so that the "verify" covers the medium, not only the cache.
        await Volume.WriteAsync((long)lba << BlockShift, task.DataOut.AsMemory(0, bytes), WriteFlags.Fua, ct).ConfigureAwait(false);
    }

    private async ValueTask VerifyAsync(ScsiTask task, CancellationToken ct)
    {
        ReadOnlySpan<byte> cdb = task.Cdb;
        if ((cdb[1] & 0xE0) != 0)
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, 1, 7);   // VRPROTECT
            return;
        }
        int byteCheck = (cdb[1] >> 1) & 0x03;
        if (byteCheck == 2)
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, 1, 2);
            return;
        }
        ScsiCdb.TryDecodeLbaLength(cdb, out ulong lba, out uint blocks);
        if (!CheckTransfer(task, lba, blocks, ScsiLimits.MaxTransferBytes)) return;
        if (blocks == 0) return;
        int bytes = (int)(blocks << BlockShift);
        long neededBytes = byteCheck switch { 1 => bytes, 3 => BlockBytes, _ => 0 };
        if (!CheckDataOut(task, neededBytes)) return;

        byte[] medium = ArrayPool<byte>.Shared.Rent(bytes);
        try
        {
            // BYTCHK 0 still reads: a block that cannot be read fails the verify with MEDIUM ERROR.
            await Volume.ReadAsync((long)lba << BlockShift, medium.AsMemory(0, bytes), ct).ConfigureAwait(false);
            if (byteCheck == 0) return;
            long mismatch = FirstMismatch(medium.AsSpan(0, bytes), task.DataOutSpan, byteCheck == 3 ? BlockBytes : bytes);
            if (mismatch >= 0)
                task.CheckCondition(new ScsiSenseInfo(SenseKey.Miscompare, Asc.MiscompareDuringVerify) { Information = (ulong)mismatch, HasInformation = true }, _descriptorSense);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(medium);
        }
    }

    /// <summary>Offset of the first byte of <paramref name="medium"/> that differs from <paramref name="expected"/> repeated every <paramref name="period"/> bytes; -1 if none.</summary>
    private static long FirstMismatch(ReadOnlySpan<byte> medium, ReadOnlySpan<byte> expected, int period)
    {
        for (int offset = 0; offset < medium.Length; offset += period)
        {
            int length = Math.Min(period, medium.Length - offset);
            int common = medium.Slice(offset, length).CommonPrefixLength(expected.Slice(0, length));
            if (common < length) return offset + common;
        }
        return -1;
    }

    private async ValueTask CompareAndWriteAsync(ScsiTask task, CancellationToken ct)
    {
        ReadOnlySpan<byte> cdb = task.Cdb;
        if ((cdb[1] & 0xE0) != 0)
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, 1, 7);
            return;
        }
        ulong lba = BinaryPrimitives.ReadUInt64BigEndian(cdb.Slice(2));
        uint blocks = cdb[13];
        bool fua = (cdb[1] & 0x08) != 0;
        if (WriteProtected)
        {
            WriteProtectedError(task);
            return;
        }
        if (blocks > ScsiLimits.MaxCompareAndWriteBlocks)
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, 13);
            return;
        }
        if (!ScsiCdb.InRange(lba, blocks, BlockCount))
        {
            LbaOutOfRange(task);
            return;
        }
        int bytes = (int)(blocks << BlockShift);
        if (task.DataOutLength != 2 * bytes)
        {
            // The data-out must be exactly the verify and the write data (SBC-4 5.3): a CAW of 256
            // blocks wraps the one-byte length to 0 and is caught here too.
            IllegalRequest(task, Asc.InvalidFieldInCdb, 13);
            return;
        }
        if (blocks == 0) return;
        long offset = (long)lba << BlockShift;
        ReadOnlyMemory<byte> expected = task.DataOut.AsMemory(0, bytes);
        ReadOnlyMemory<byte> source = task.DataOut.AsMemory(bytes, bytes);
        bool written = await Volume.CompareAndWriteAsync(offset, expected, source, ct).ConfigureAwait(false);
        if (written)
        {
            if (fua) await Volume.FlushAsync(ct).ConfigureAwait(false);
            return;
        }
        // Miscompare: report the offset of the first differing byte (SBC-3 5.2).
        byte[] medium = ArrayPool<byte>.Shared.Rent(bytes);
        try
        {
            await Volume.ReadAsync(offset, medium.AsMemory(0, bytes), ct).ConfigureAwait(false);
            long mismatch = FirstMismatch(medium.AsSpan(0, bytes), expected.Span, bytes);
            task.CheckCondition(new ScsiSenseInfo(SenseKey.Miscompare, Asc.MiscompareDuringVerify)
            {
                Information = (ulong)Math.Max(0, mismatch),
                HasInformation = true,
            }, _descriptorSense);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(medium);
        }
    }

    private async ValueTask OrWriteAsync(ScsiTask task, CancellationToken ct)
    {
        ReadOnlySpan<byte> cdb = task.Cdb;
        if ((cdb[1] & 0xE0) != 0)
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, 1, 7);
            return;
        }
        bool fua = (cdb[1] & 0x08) != 0;
        ScsiCdb.TryDecodeLbaLength(cdb, out ulong lba, out uint blocks);
        if (WriteProtected)
        {
            WriteProtectedError(task);
            return;
        }
        if (!CheckTransfer(task, lba, blocks, ScsiLimits.MaxTransferBytes)) return;
        if (blocks == 0) return;
        int bytes = (int)(blocks << BlockShift);
        if (!CheckDataOut(task, bytes)) return;
        long offset = (long)lba << BlockShift;
        byte[] old = ArrayPool<byte>.Shared.Rent(bytes);
        byte[] merged = ArrayPool<byte>.Shared.Rent(bytes);
        try
        {
            // Read, OR, then compare-and-write so that a concurrent writer is never overwritten with stale bits.
            while (true)
            {
                await Volume.ReadAsync(offset, old.AsMemory(0, bytes), ct).ConfigureAwait(false);
                OrInto(old.AsSpan(0, bytes), task.DataOutSpan.Slice(0, bytes), merged.AsSpan(0, bytes));
                if (await Volume.CompareAndWriteAsync(offset, old.AsMemory(0, bytes), merged.AsMemory(0, bytes), ct).ConfigureAwait(false))
                    break;
            }
            if (fua) await Volume.FlushAsync(ct).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(old);
            ArrayPool<byte>.Shared.Return(merged);
        }
    }

    private static void OrInto(ReadOnlySpan<byte> a, ReadOnlySpan<byte> b, Span<byte> result)
    {
        for (int i = 0; i < result.Length; i++) result[i] = (byte)(a[i] | b[i]);
    }

    private async ValueTask SynchronizeCacheAsync(ScsiTask task, CancellationToken ct)
    {
        ScsiCdb.TryDecodeLbaLength(task.Cdb, out ulong lba, out uint blocks);
        if (!ScsiCdb.InRange(lba, blocks, BlockCount))
        {
            LbaOutOfRange(task);
            return;
        }
        await Volume.FlushAsync(ct).ConfigureAwait(false);
    }

    private void PreFetch(ScsiTask task)
    {
        ScsiCdb.TryDecodeLbaLength(task.Cdb, out ulong lba, out uint blocks);
        if (!ScsiCdb.InRange(lba, blocks, BlockCount))
        {
            LbaOutOfRange(task);
            return;
        }
        // Nothing to stage: the engine caches what it reads. GOOD says "not necessarily in cache".
        task.SetGood();
    }

    // ---- WRITE SAME / UNMAP ----

    private async ValueTask WriteSameAsync(ScsiTask task, CancellationToken ct)
    {
        ReadOnlySpan<byte> cdb = task.Cdb;
        bool sixteen = cdb[0] == ScsiOpcode.WriteSame16;
        if ((cdb[1] & 0xE0) != 0)
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, 1, 7);
            return;
        }
        bool anchor = (cdb[1] & 0x10) != 0;
        bool unmap = (cdb[1] & 0x08) != 0;
        bool noDataOut = sixteen && (cdb[1] & 0x01) != 0;
        ScsiCdb.TryDecodeLbaLength(cdb, out ulong lba, out uint blocks);
        if (anchor && !unmap)
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, 1, 4);
            return;
        }
        if (WriteProtected)
        {
            WriteProtectedError(task);
            return;
        }
        if (blocks == 0)
        {
            // WSNZ is set in the Block Limits page: zero blocks ("to the end of the medium") is refused.
            IllegalRequest(task, Asc.InvalidFieldInCdb, sixteen ? 10 : 7);
            return;
        }
        if (!ScsiCdb.InRange(lba, blocks, BlockCount))
        {
            LbaOutOfRange(task);
            return;
        }
        if ((long)blocks << BlockShift > ScsiLimits.MaxWriteSameBytes)
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, sixteen ? 10 : 7);
            return;
        }
        if (task.DataOutLength != (noDataOut ? 0 : BlockBytes))
        {
            // Exactly one block of pattern (none with NDOB): more or less is an error (SBC-4 5.50).
            IllegalRequest(task, Asc.InvalidFieldInCdb, sixteen ? 10 : 7);
            return;
        }

        long offset = (long)lba << BlockShift;
        long length = (long)blocks << BlockShift;
        ReadOnlySpan<byte> pattern = noDataOut ? default : task.DataOutSpan.Slice(0, BlockBytes);
        if (noDataOut || !pattern.ContainsAnyExcept((byte)0))
        {
            if (unmap && !anchor)
                await Volume.TrimAsync(offset, length, ct).ConfigureAwait(false);
            else
                await Volume.WriteZeroesAsync(offset, length, ZeroFlags.NoHole, ct).ConfigureAwait(false);
            return;
        }

        int pieceBytes = (int)Math.Min(length, ScsiLimits.WriteSamePieceBytes);
        byte[] piece = ArrayPool<byte>.Shared.Rent(pieceBytes);
        try
        {
            for (int i = 0; i < pieceBytes; i += BlockBytes) task.DataOutSpan.Slice(0, BlockBytes).CopyTo(piece.AsSpan(i));
            for (long done = 0; done < length; done += pieceBytes)
            {
                int bytes = (int)Math.Min(pieceBytes, length - done);
                await Volume.WriteAsync(offset + done, piece.AsMemory(0, bytes), WriteFlags.None, ct).ConfigureAwait(false);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(piece);
        }
    }

    private async ValueTask UnmapAsync(ScsiTask task, CancellationToken ct)
    {
        ReadOnlySpan<byte> cdb = task.Cdb;
        bool anchor = (cdb[1] & 0x01) != 0;
        int parameterLength = BinaryPrimitives.ReadUInt16BigEndian(cdb.Slice(7));
        if (WriteProtected)
        {
            WriteProtectedError(task);
            return;
        }
        if (parameterLength == 0) return;
        if (parameterLength < 8 || task.DataOutLength < 8)
        {
            IllegalRequest(task, Asc.ParameterListLengthError, 7);
            return;
        }
        ReadOnlySpan<byte> list = task.DataOutSpan.Slice(0, Math.Min(parameterLength, task.DataOutLength));
        int dataLength = BinaryPrimitives.ReadUInt16BigEndian(list);
        int descriptorBytes = BinaryPrimitives.ReadUInt16BigEndian(list.Slice(2));
        if (descriptorBytes > list.Length - 8 || dataLength < descriptorBytes + 6)
        {
            IllegalParameter(task, Asc.ParameterListLengthError, 2);
            return;
        }
        int count = descriptorBytes / 16;
        if (count > ScsiLimits.MaxUnmapDescriptors)
        {
            IllegalParameter(task, Asc.InvalidFieldInParameterList, 2);
            return;
        }
        // Validate every descriptor before changing anything.
        long total = 0;
        for (int i = 0; i < count; i++)
        {
            ReadOnlySpan<byte> d = list.Slice(8 + i * 16, 16);
            ulong lba = BinaryPrimitives.ReadUInt64BigEndian(d);
            uint blocks = BinaryPrimitives.ReadUInt32BigEndian(d.Slice(8));
            if (!ScsiCdb.InRange(lba, blocks, BlockCount))
            {
                LbaOutOfRange(task);
                return;
            }
            total += (long)blocks << BlockShift;
        }
        if (total > ScsiLimits.MaxUnmapBytes)
        {
            IllegalParameter(task, Asc.InvalidFieldInParameterList, 8);
            return;
        }
        // Copy the descriptors: the data-out buffer stays valid, but spans cannot cross awaits.
        for (int i = 0; i < count; i++)
        {
            ulong lba = BinaryPrimitives.ReadUInt64BigEndian(task.DataOutSpan.Slice(8 + i * 16));
            uint blocks = BinaryPrimitives.ReadUInt32BigEndian(task.DataOutSpan.Slice(8 + i * 16 + 8));
            if (blocks == 0) continue;
            long offset = (long)lba << BlockShift;
            long length = (long)blocks << BlockShift;
            if (anchor)
                await Volume.WriteZeroesAsync(offset, length, ZeroFlags.NoHole, ct).ConfigureAwait(false);
            else
                await Volume.TrimAsync(offset, length, ct).ConfigureAwait(false);
        }
    }

    // ---- capacity and provisioning status ----

    private void ReadCapacity10(ScsiTask task)
    {
        ReadOnlySpan<byte> cdb = task.Cdb;
        bool pmi = (cdb[8] & 0x01) != 0;
        uint lba = BinaryPrimitives.ReadUInt32BigEndian(cdb.Slice(2));
        if (!pmi && lba != 0)
        {
            IllegalRequest(task, Asc.InvalidFieldInCdb, 2);
            return;
        }
        Span<byte> data = task.AllocateDataIn(8).Span;
        long last = BlockCount - 1;
        BinaryPrimitives.WriteUInt32BigEndian(data, last > uint.MaxValue ? uint.MaxValue : (uint)last);
        BinaryPrimitives.WriteUInt32BigEndian(data.Slice(4), (uint)BlockBytes);
    }

    private async ValueTask ServiceActionIn16Async(ScsiTask task, CancellationToken ct)
    {
        ReadOnlySpan<byte> cdb = task.Cdb;
        switch (cdb[1] & 0x1F)
        {
            case ScsiServiceAction.ReadCapacity16:
                ReadCapacity16(task);
                return;
            case ScsiServiceAction.GetLbaStatus:
                await GetLbaStatusAsync(task, ct).ConfigureAwait(false);
                return;
            default:
                IllegalRequest(task, Asc.InvalidFieldInCdb, 1, 4);
                return;
        }
    }

    private void ReadCapacity16(ScsiTask task)
    {
        ReadOnlySpan<byte> cdb = task.Cdb;
        uint allocation = BinaryPrimitives.ReadUInt32BigEndian(cdb.Slice(10));
        Span<byte> data = task.AllocateDataIn(32).Span;
        BinaryPrimitives.WriteUInt64BigEndian(data, (ulong)(BlockCount - 1));
        BinaryPrimitives.WriteUInt32BigEndian(data.Slice(8), (uint)BlockBytes);
        data[13] = (byte)(BlockBytes == 512 ? 3 : 0);          // logical blocks per physical block exponent (4096-byte chunks)
        data[14] = 0x80 | 0x40;                                   // LBPME, LBPRZ: thin, unmapped blocks read as zeros
        task.TruncateDataIn((int)Math.Min(allocation, int.MaxValue));
    }

    private async ValueTask GetLbaStatusAsync(ScsiTask task, CancellationToken ct)
    {
        ReadOnlySpan<byte> cdb = task.Cdb;
        ulong start = BinaryPrimitives.ReadUInt64BigEndian(cdb.Slice(2));
        uint allocation = BinaryPrimitives.ReadUInt32BigEndian(cdb.Slice(10));
        long capacity = BlockCount;
        if (start >= (ulong)capacity)
        {
            LbaOutOfRange(task);
            return;
        }
        if (allocation < 24)
        {
            // Room for the header only (or less): report the header with no descriptors.
            Span<byte> header = task.AllocateDataIn(8).Span;
            BinaryPrimitives.WriteUInt32BigEndian(header, 4);
            task.TruncateDataIn((int)allocation);
            return;
        }
        int descriptorsMax = (int)Math.Min((allocation - 8) / 16, ScsiLimits.MaxLbaStatusDescriptors);
        long offset = (long)start << BlockShift;
        long length = Math.Min(Volume.SizeBytes - offset, ScsiLimits.LbaStatusWindowBytes);
        ExtentList extents = await Volume.GetAllocationAsync(offset, length, ct).ConfigureAwait(false);

        Memory<byte> memory = task.AllocateDataIn(8 + descriptorsMax * 16);
        Span<byte> data = memory.Span;
        int count = 0;
        long position = offset;
        long end = offset + length;
        for (int i = 0; i < extents.Count && count < descriptorsMax && position < end; i++)
        {
            Extent extent = extents[i];
            long extentEnd = Math.Min(end, extent.Offset + extent.Length);
            if (extentEnd <= position) continue;
            if (extent.Offset > position) break;   // a gap: stop; the host asks again from there
            byte status = extent.Kind switch
            {
                ExtentKind.Data => 0,      // mapped
                ExtentKind.Hole => 1,      // deallocated
                _ => 2,                    // anchored: allocated in the host's view, reads zeros, no data stored
            };
            // Descriptors cover whole blocks; extents are chunk-aligned in the engine, so this is exact.
            long firstBlock = position >> BlockShift;
            long lastBlockEnd = (extentEnd + BlockBytes - 1) >> BlockShift;
            long blocks = lastBlockEnd - firstBlock;
            while (blocks > 0 && count < descriptorsMax)
            {
                uint piece = (uint)Math.Min(blocks, uint.MaxValue);
                Span<byte> d = data.Slice(8 + count * 16, 16);
                BinaryPrimitives.WriteUInt64BigEndian(d, (ulong)firstBlock);
                BinaryPrimitives.WriteUInt32BigEndian(d.Slice(8), piece);
                d[12] = status;
                count++;
                firstBlock += piece;
                blocks -= piece;
            }
            position = extentEnd;
        }
        if (count == 0)
        {
            // Nothing described: report the first block as mapped (contents unknown).
            Span<byte> d = data.Slice(8, 16);
            BinaryPrimitives.WriteUInt64BigEndian(d, start);
            BinaryPrimitives.WriteUInt32BigEndian(d.Slice(8), 1);
            count = 1;
        }
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)(4 + count * 16));
        task.DataInLength = 8 + count * 16;
    }

    // ---- medium state ----

    private void StartStopUnit(ScsiTask task)
    {
        ReadOnlySpan<byte> cdb = task.Cdb;
        int powerCondition = cdb[4] >> 4;
        bool loadEject = (cdb[4] & 0x02) != 0;
        bool start = (cdb[4] & 0x01) != 0;
        if (powerCondition != 0)
        {
            // Power conditions are accepted and ignored (there is no spindle).
            task.SetGood();
            return;
        }
        if (loadEject && !start && IsRemovalPrevented())
        {
            CheckCondition(task, SenseKey.IllegalRequest, Asc.MediumRemovalPrevented);
            return;
        }
        task.SetGood();
    }
}
