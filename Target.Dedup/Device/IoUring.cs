// A minimal io_uring (Linux 5.1+) over raw syscalls: one submission and one completion ring,
// used by exactly one thread (the ring's owner), which prepares SQEs, submits and reaps CQEs.
// Only what the engine needs: READ and READ_FIXED (one registered buffer), WRITEV and a
// draining FSYNC (the destager's journal writes), submit, wait.
// Invariants: SQEs are written only between head and head + entries (TryGetSqe checks the
// room); the SQ tail is published with a release store after the SQE is complete; a CQE is
// consumed (head advanced) only after its fields were read.
using System.Runtime.InteropServices;

namespace Target.Dedup.Device;

internal sealed unsafe partial class IoUring : IDisposable
{
    // linux/io_uring.h
    private const uint SetupCqSize = 1u << 3;
    private const uint SetupCoopTaskrun = 1u << 8;
    private const uint SetupSingleIssuer = 1u << 12;
    private const uint SetupDeferTaskrun = 1u << 13;
    private const uint FeatSingleMmap = 1u << 0;
    private const uint EnterGetEvents = 1u << 0;
    private const long OffSqRing = 0;
    private const long OffCqRing = 0x8000000;
    private const long OffSqes = 0x10000000;
    private const uint RegisterBuffers = 0;
    public const byte OpRead = 22;
    public const byte OpReadFixed = 4;
    private const byte OpWritev = 2;
    private const byte OpFsync = 3;
    private const uint FsyncDatasync = 1;
    private const byte SqeIoDrain = 1 << 1;
    private const int SqeBytes = 64;
    private const int CqeBytes = 16;

    // x86_64 / aarch64 syscall numbers (the same on both since 5.1).
    private const long SysSetup = 425;
    private const long SysEnter = 426;
    private const long SysRegister = 427;

    [StructLayout(LayoutKind.Sequential)]
    private struct SqRingOffsets
    {
        public uint Head, Tail, RingMask, RingEntries, Flags, Dropped, Array, Resv1;
        public ulong UserAddr;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct CqRingOffsets
    {
        public uint Head, Tail, RingMask, RingEntries, Overflow, Cqes, Flags, Resv1;
        public ulong UserAddr;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct Params
    {
        public uint SqEntries, CqEntries, Flags, SqThreadCpu, SqThreadIdle, Features, WqFd, Resv0, Resv1, Resv2;
        public SqRingOffsets SqOff;
        public CqRingOffsets CqOff;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct IoVec
    {
        public void* Base;
        public nuint Length;
    }

    [StructLayout(LayoutKind.Explicit, Size = CqeBytes)]
    public struct Cqe
    {
        [FieldOffset(0)] public ulong UserData;
        [FieldOffset(8)] public int Result;
        [FieldOffset(12)] public uint Flags;
    }

    private int _fd;
    private readonly byte* _sqRing;
    private readonly nuint _sqRingBytes;
    private readonly byte* _cqRing;
    private readonly nuint _cqRingBytes;
    private readonly byte* _sqes;
    private readonly nuint _sqesBytes;
    private readonly uint* _sqHead;
    private readonly uint* _sqTail;
    private readonly uint _sqMask;
    private readonly uint* _sqArray;
    private readonly uint* _cqHead;
    private readonly uint* _cqTail;
    private readonly uint _cqMask;
    private readonly Cqe* _cqes;
    private uint _sqLocalTail;
    private uint _toSubmit;

    public uint SqEntries { get; }

    public uint CqEntries { get; }

    /// <summary>True when the kernel accepted the registered buffer: use <see cref="OpReadFixed"/> with buffer index 0.</summary>
    public bool HasFixedBuffer { get; private set; }

    private IoUring(int fd, in Params p)
    {
        _fd = fd;
        SqEntries = p.SqEntries;
        CqEntries = p.CqEntries;
        _sqRingBytes = p.SqOff.Array + p.SqEntries * sizeof(uint);
        _cqRingBytes = p.CqOff.Cqes + p.CqEntries * (uint)CqeBytes;
        bool single = (p.Features & FeatSingleMmap) != 0;
        if (single) _sqRingBytes = _cqRingBytes = Math.Max(_sqRingBytes, _cqRingBytes);
        _sqRing = Map(fd, _sqRingBytes, OffSqRing);
        _cqRing = single ? _sqRing : Map(fd, _cqRingBytes, OffCqRing);
        _sqesBytes = p.SqEntries * (uint)SqeBytes;
        _sqes = Map(fd, _sqesBytes, OffSqes);
        _sqHead = (uint*)(_sqRing + p.SqOff.Head);
        _sqTail = (uint*)(_sqRing + p.SqOff.Tail);
        _sqMask = *(uint*)(_sqRing + p.SqOff.RingMask);
        _sqArray = (uint*)(_sqRing + p.SqOff.Array);
        _cqHead = (uint*)(_cqRing + p.CqOff.Head);
        _cqTail = (uint*)(_cqRing + p.CqOff.Tail);
        _cqMask = *(uint*)(_cqRing + p.CqOff.RingMask);
        _cqes = (Cqe*)(_cqRing + p.CqOff.Cqes);
        _sqLocalTail = Volatile.Read(ref *_sqTail);
        // The SQ array is an indirection we do not need: slot i always names SQE i.
        for (uint i = 0; i < p.SqEntries; i++) _sqArray[i] = i;
    }

    /// <summary>
    /// Sets up a ring of <paramref name="entries"/> SQEs and <paramref name="completionEntries"/> CQEs
    /// for use by the calling thread only, or returns null with the reason (old kernel, io_uring
    /// disabled by sysctl or seccomp).
    /// </summary>
    /// <param name="anyThread">The ring is used by one thread at a time but not always the same one: no single-issuer or deferred/cooperative task-work flags.</param>
    public static IoUring? TryCreate(uint entries, uint completionEntries, out string? failure, bool anyThread = false)
    {
        // Newest flags first: one issuer with deferred task work runs completions only when the
        // owner waits (no interrupts of other threads); older kernels reject the flags (EINVAL).
        uint[] flagSets = anyThread ? [0] : [SetupSingleIssuer | SetupDeferTaskrun, SetupCoopTaskrun, 0];
        failure = null;
        foreach (uint flags in flagSets)
        {
            var p = new Params { Flags = flags | SetupCqSize, CqEntries = completionEntries };
            long fd = Syscall(SysSetup, (nint)entries, (nint)(&p), 0, 0, 0, 0);
            if (fd < 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                failure = $"io_uring_setup: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})";
                if (errno == NativeIo.EINVAL) continue;
                return null;
            }
            try
            {
                return new IoUring((int)fd, p);
            }
            catch (IOException e)
            {
                NativeIo.Close((int)fd);
                failure = e.Message;
                return null;
            }
        }
        return null;
    }

    /// <summary>Registers one buffer for READ_FIXED; false (and plain READs) when the kernel refuses (memlock limit).</summary>
    public bool TryRegisterBuffer(void* buffer, nuint bytes)
    {
        var iov = new IoVec { Base = buffer, Length = bytes };
        HasFixedBuffer = Syscall(SysRegister, _fd, (nint)RegisterBuffers, (nint)(&iov), 1, 0, 0) == 0;
        return HasFixedBuffer;
    }

    /// <summary>SQEs prepared and not yet submitted.</summary>
    public uint ToSubmit => _toSubmit;

    /// <summary>SQEs that can still be prepared before the next submit.</summary>
    public uint SqRoom => SqEntries - (_sqLocalTail - Volatile.Read(ref *_sqHead));

    /// <summary>Prepares a read of <paramref name="bytes"/> at <paramref name="offsetBytes"/> into <paramref name="buffer"/>; false when the SQ is full.</summary>
    public bool TryPrepareRead(int fd, byte* buffer, int bytes, long offsetBytes, ulong userData, bool fixedBuffer)
    {
        if (SqRoom == 0) return false;
        byte* sqe = _sqes + (_sqLocalTail & _sqMask) * SqeBytes;
        new Span<byte>(sqe, SqeBytes).Clear();
        sqe[0] = fixedBuffer ? OpReadFixed : OpRead;
        *(int*)(sqe + 4) = fd;
        *(long*)(sqe + 8) = offsetBytes;
        *(ulong*)(sqe + 16) = (ulong)buffer;
        *(uint*)(sqe + 24) = (uint)bytes;
        *(ulong*)(sqe + 32) = userData;
        // buf_index (offset 40) stays 0: the one registered buffer.
        _sqLocalTail++;
        _toSubmit++;
        Volatile.Write(ref *_sqTail, _sqLocalTail);
        return true;
    }

    /// <summary>Prepares a vectored write of <paramref name="count"/> iovecs (which must stay valid until it completes); false when the SQ is full.</summary>
    public bool TryPrepareWritev(int fd, NativeIo.IoVec* iov, int count, long offsetBytes, ulong userData)
    {
        if (SqRoom == 0) return false;
        byte* sqe = NextSqe();
        sqe[0] = OpWritev;
        *(int*)(sqe + 4) = fd;
        *(long*)(sqe + 8) = offsetBytes;
        *(ulong*)(sqe + 16) = (ulong)iov;
        *(uint*)(sqe + 24) = (uint)count;
        *(ulong*)(sqe + 32) = userData;
        Publish();
        return true;
    }

    /// <summary>
    /// Prepares an fdatasync that starts only once every request submitted before it completed,
    /// and holds back every request submitted after it until it completed (IOSQE_IO_DRAIN);
    /// false when the SQ is full.
    /// </summary>
    public bool TryPrepareDrainingDatasync(int fd, ulong userData)
    {
        if (SqRoom == 0) return false;
        byte* sqe = NextSqe();
        sqe[0] = OpFsync;
        sqe[1] = SqeIoDrain;
        *(int*)(sqe + 4) = fd;
        *(uint*)(sqe + 28) = FsyncDatasync;
        *(ulong*)(sqe + 32) = userData;
        Publish();
        return true;
    }

    private byte* NextSqe()
    {
        byte* sqe = _sqes + (_sqLocalTail & _sqMask) * SqeBytes;
        new Span<byte>(sqe, SqeBytes).Clear();
        return sqe;
    }

    private void Publish()
    {
        _sqLocalTail++;
        _toSubmit++;
        Volatile.Write(ref *_sqTail, _sqLocalTail);
    }

    /// <summary>
    /// Submits the prepared SQEs and, when <paramref name="waitFor"/> is positive, waits until that
    /// many completions are ready. Returns false when interrupted (EINTR) before the wait ended.
    /// </summary>
    public bool Enter(uint waitFor)
    {
        uint submit = _toSubmit;
        if (submit == 0 && waitFor == 0) return true;
        long r = Syscall(SysEnter, _fd, (nint)submit, (nint)waitFor, (nint)(waitFor > 0 ? EnterGetEvents : 0), 0, 0);
        if (r < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno == NativeIo.EINTR || errno == EAGAIN || errno == EBUSY) return false;
            throw new IOException($"io_uring_enter: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})", errno);
        }
        _toSubmit -= (uint)Math.Min(r, submit);
        return true;
    }

    private const int EAGAIN = 11;
    private const int EBUSY = 16;

    /// <summary>Takes the next completion, if any.</summary>
    public bool TryTakeCqe(out Cqe cqe)
    {
        uint head = *_cqHead;
        if (head == Volatile.Read(ref *_cqTail))
        {
            cqe = default;
            return false;
        }
        cqe = _cqes[head & _cqMask];
        Volatile.Write(ref *_cqHead, head + 1);
        return true;
    }

    public bool HasCqe => *_cqHead != Volatile.Read(ref *_cqTail);

    private static byte* Map(int fd, nuint bytes, long offset)
    {
        void* p = NativeIo.Mmap(null, bytes, NativeIo.PROT_READ | NativeIo.PROT_WRITE, NativeIo.MAP_SHARED | NativeIo.MAP_POPULATE, fd, offset);
        if (p == (void*)-1)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new IOException($"mmap of io_uring ring: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})", errno);
        }
        return (byte*)p;
    }

    public void Dispose()
    {
        if (_fd < 0) return;
        NativeIo.Munmap(_sqes, _sqesBytes);
        if (_cqRing != _sqRing) NativeIo.Munmap(_cqRing, _cqRingBytes);
        NativeIo.Munmap(_sqRing, _sqRingBytes);
        NativeIo.Close(_fd);
        _fd = -1;
    }

    [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true)]
    private static partial long Syscall(long number, nint a1, nint a2, nint a3, nint a4, nint a5, nint a6);
}
