// The destager's journal writes through io_uring: each batch is one WRITEV straight from its
// header buffer and cache pages, submitted as soon as the batch is built, and a group's
// fdatasync, when it has one, is an FSYNC with IOSQE_IO_DRAIN submitted after the group's last
// write (it starts once every earlier write completed). No thread hand-off per write, no blocked pool threads.
// Used by one thread at a time (whoever holds the pool's commit mutex, so never two at once),
// and never by two turns' requests at once: a turn reaps everything it submitted before it
// returns (WaitGroup, Drain).
// Invariants: a slot's iovecs and the memory they name stay untouched until its write's
// completion is reaped; a short write is completed synchronously and followed by a flush before
// WaitGroup returns; a failed write or flush is an IOException from WaitGroup.
using System.Numerics;
using System.Runtime.InteropServices;

namespace Target.Dedup.Device;

internal sealed unsafe class LogRing : IDisposable
{
    private const ulong FlushTag = 1UL << 62;
    private const int Pending = int.MinValue;
    private const int PageBytes = DeviceConstants.SectorBytes;

    private readonly IoUring _ring;
    private readonly FileDevice _device;
    private readonly int _vectorsPerSlot;
    private NativeIo.IoVec* _iov;
    private readonly int[] _vectors;
    private readonly long[] _offset;
    private readonly long[] _expected;
    private readonly int[] _result;
    private readonly int[] _flushResult;
    private int _outstanding;

    private LogRing(IoUring ring, FileDevice device, int slots, int vectorsPerSlot, int groups)
    {
        _ring = ring;
        _device = device;
        _vectorsPerSlot = vectorsPerSlot;
        _iov = (NativeIo.IoVec*)NativeMemory.AllocZeroed((nuint)(slots * vectorsPerSlot), (nuint)sizeof(NativeIo.IoVec));
        _vectors = new int[slots];
        _offset = new long[slots];
        _expected = new long[slots];
        _result = new int[slots];
        _flushResult = new int[groups];
    }

    /// <summary>A ring for <paramref name="slots"/> batches of up to <paramref name="vectorsPerSlot"/> segments and <paramref name="groups"/> group flushes, or null (not a file, or no io_uring) with the reason.</summary>
    public static LogRing? TryCreate(IBlockDevice device, int slots, int vectorsPerSlot, int groups, out string? failure)
    {
        if (device is not FileDevice file)
        {
            failure = $"{device.Name} is not a file device";
            return null;
        }
        uint entries = BitOperations.RoundUpToPowerOf2((uint)(slots + groups));
        IoUring? ring = IoUring.TryCreate(entries, 4 * entries, out failure, anyThread: true);
        return ring == null ? null : new LogRing(ring, file, slots, vectorsPerSlot, groups);
    }

    /// <summary>Requests submitted and not reaped yet.</summary>
    public int Outstanding => _outstanding;

    /// <summary>Submits the write of <paramref name="head"/> then the 4 KiB at each of <paramref name="pages"/> at <paramref name="offsetBytes"/>, for batch slot <paramref name="slot"/>.</summary>
    public void SubmitWrite(int slot, long offsetBytes, ReadOnlySpan<byte> head, ReadOnlySpan<nint> pages)
    {
        if (_result[slot] == Pending) throw new InvalidOperationException($"slot {slot} still has a write in flight");
        if (1 + pages.Length > _vectorsPerSlot) throw new ArgumentException($"a batch write takes at most {_vectorsPerSlot - 1} pages");
        if (offsetBytes % PageBytes != 0 || head.Length % PageBytes != 0 || offsetBytes + head.Length + (long)pages.Length * PageBytes > _device.SizeBytes)
            throw new ArgumentException($"bad journal write: offset {offsetBytes}, {head.Length} + {pages.Length} pages");
        NativeIo.IoVec* iov = _iov + (long)slot * _vectorsPerSlot;
        int count = 0;
        // The head is a pinned native buffer (AlignedBuffer): its address stays valid.
        fixed (byte* h = head) iov[count++] = new NativeIo.IoVec { Base = h, Length = (nuint)head.Length };
        foreach (nint page in pages) iov[count++] = new NativeIo.IoVec { Base = (void*)page, Length = PageBytes };
        _vectors[slot] = count;
        _offset[slot] = offsetBytes;
        _expected[slot] = head.Length + (long)pages.Length * PageBytes;
        _result[slot] = Pending;
        while (!_ring.TryPrepareWritev(_device.Descriptor, iov, count, offsetBytes, (ulong)slot)) Reap(wait: true);
        _outstanding++;
        Submit();
    }

    /// <summary>Submits group <paramref name="group"/>'s fdatasync, which runs after every write submitted before it.</summary>
    public void SubmitFlush(int group)
    {
        if (_flushResult[group] == Pending) throw new InvalidOperationException($"group {group} still has a flush in flight");
        _flushResult[group] = Pending;
        while (!_ring.TryPrepareDrainingDatasync(_device.Descriptor, FlushTag | (uint)group)) Reap(wait: true);
        _outstanding++;
        Submit();
    }

    /// <summary>
    /// Waits for group <paramref name="group"/>'s flush if <paramref name="flushed"/>, then checks
    /// the writes of its slots [<paramref name="firstSlot"/>, +<paramref name="count"/>): a short one
    /// is finished synchronously (and flushed again if the group has a flush), a failed one or a
    /// failed flush throws IOException.
    /// </summary>
    public void WaitGroup(int group, int firstSlot, int count, bool flushed)
    {
        while (flushed && _flushResult[group] == Pending) Reap(wait: true);
        for (int s = firstSlot; s < firstSlot + count; s++)
            while (_result[s] == Pending) Reap(wait: true);
        bool rewrote = false;
        for (int s = firstSlot; s < firstSlot + count; s++)
        {
            int r = _result[s];
            if (r == _expected[s]) continue;
            if (r < 0) throw new IOException($"journal write of {_expected[s]} bytes at {_offset[s]} on {_device.Name}: {Marshal.GetPInvokeErrorMessage(-r)} (errno {-r})", -r);
            WriteRest(s, r);
            rewrote = true;
        }
        if (!flushed) return;
        int f = _flushResult[group];
        if (f < 0) throw new IOException($"fdatasync {_device.Name}: {Marshal.GetPInvokeErrorMessage(-f)} (errno {-f})", -f);
        if (rewrote) _device.Flush();
    }

    /// <summary>Waits until nothing submitted is in flight (before the memory it names may be reused), ignoring results.</summary>
    public void Drain()
    {
        while (_outstanding > 0) Reap(wait: true);
    }

    /// <summary>
    /// A short write: the bytes after the first <paramref name="done"/> are written synchronously,
    /// from the slot's own iovecs (its write was reaped, so they are free to trim in place).
    /// </summary>
    private void WriteRest(int slot, int done)
    {
        NativeIo.IoVec* iov = _iov + (long)slot * _vectorsPerSlot;
        int count = _vectors[slot];
        int first = FileDevice.SkipWritten(iov, 0, count, done);
        FileDevice.WriteVectors(_device.Descriptor, iov + first, count - first, _offset[slot] + done, _device.Name);
    }

    private void Submit()
    {
        while (_ring.ToSubmit > 0)
        {
            if (!_ring.Enter(0)) Reap(wait: false);
        }
    }

    private void Reap(bool wait)
    {
        if (wait && _outstanding == 0) throw new InvalidOperationException("waiting for a journal completion with nothing in flight");
        if (wait && !_ring.HasCqe) _ring.Enter(1);
        while (_ring.TryTakeCqe(out IoUring.Cqe cqe))
        {
            _outstanding--;
            if ((cqe.UserData & FlushTag) != 0) _flushResult[(int)(uint)cqe.UserData] = cqe.Result;
            else _result[(int)cqe.UserData] = cqe.Result;
        }
    }

    public void Dispose()
    {
        if (_iov == null) return;
        Drain();
        _ring.Dispose();
        NativeMemory.Free(_iov);
        _iov = null;
    }
}
