// A back-end file or block device opened with O_DIRECT (unless told otherwise), preallocated.
// Invariants: every transfer is whole, 4096-aligned sectors; short transfers are retried until
// complete or reported as an IOException; Flush is fdatasync.
using System.Runtime.InteropServices;

namespace Target.Dedup.Device;

public sealed unsafe class FileDevice : IBlockDevice
{
    private int _fd;

    private FileDevice(int fd, string path, long sizeBytes)
    {
        _fd = fd;
        Name = path;
        SizeBytes = sizeBytes;
    }

    public string Name { get; }

    /// <summary>The open file descriptor, for reads submitted through io_uring (-1 once disposed).</summary>
    internal int Descriptor => _fd;

    public long SizeBytes { get; }

    /// <summary>Opens (creating and preallocating when <paramref name="createSizeBytes"/> is set) a back-end file.</summary>
    public static FileDevice Open(string path, bool direct, long? createSizeBytes = null)
    {
        int flags = NativeIo.O_RDWR | NativeIo.O_CLOEXEC | (createSizeBytes.HasValue ? NativeIo.O_CREAT : 0);
        if (direct) flags |= NativeIo.O_DIRECT;
        int fd = NativeIo.Open(path, flags, Convert.ToInt32("644", 8));
        if (fd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (direct && errno == NativeIo.EINVAL)
                throw new IOException($"{path}: this file system does not support O_DIRECT (tmpfs has none); put the pool on ext4/xfs or a block device, or pass --no-direct");
            throw new IOException($"open {path}: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})", errno);
        }
        try
        {
            if (createSizeBytes is long size)
            {
                if (size % DeviceConstants.SectorBytes != 0) throw new ArgumentException("device size must be a multiple of 4096");
                if (NativeIo.FAllocate(fd, 0, 0, size) != 0)
                {
                    int errno = Marshal.GetLastPInvokeError();
                    if (errno != NativeIo.EOPNOTSUPP) throw new IOException($"fallocate {path} ({size} bytes): {Marshal.GetPInvokeErrorMessage(errno)}", errno);
                    if (NativeIo.FTruncate(fd, size) != 0) throw NativeIo.Error("ftruncate", path);
                }
            }
            long end = NativeIo.LSeek(fd, 0, 2);
            if (end < 0) throw NativeIo.Error("lseek", path);
            return new FileDevice(fd, path, end - end % DeviceConstants.SectorBytes);
        }
        catch
        {
            NativeIo.Close(fd);
            throw;
        }
    }

    public void Read(long offsetBytes, Span<byte> destination)
    {
        Check(offsetBytes, destination.Length);
        fixed (byte* p = destination)
        {
            int done = 0;
            while (done < destination.Length)
            {
                nint n = NativeIo.PRead(_fd, p + done, destination.Length - done, offsetBytes + done);
                if (n < 0)
                {
                    if (Marshal.GetLastPInvokeError() == NativeIo.EINTR) continue;
                    throw NativeIo.Error($"pread at {offsetBytes + done}", Name);
                }
                if (n == 0) throw new IOException($"pread {Name} at {offsetBytes + done}: unexpected end of device");
                done += (int)n;
            }
        }
    }

    public void Write(long offsetBytes, ReadOnlySpan<byte> source)
    {
        Check(offsetBytes, source.Length);
        fixed (byte* p = source)
        {
            int done = 0;
            while (done < source.Length)
            {
                nint n = NativeIo.PWrite(_fd, p + done, source.Length - done, offsetBytes + done);
                if (n < 0)
                {
                    if (Marshal.GetLastPInvokeError() == NativeIo.EINTR) continue;
                    throw NativeIo.Error($"pwrite at {offsetBytes + done}", Name);
                }
                done += (int)n;
            }
        }
    }

    public void WriteGathered(long offsetBytes, ReadOnlySpan<byte> head, ReadOnlySpan<nint> pages)
    {
        const int PageBytes = DeviceConstants.SectorBytes;
        long total = head.Length + (long)pages.Length * PageBytes;
        Check(offsetBytes, (int)total);
        if (pages.Length + 1 > MaxVectors) throw new ArgumentException($"a gathered write takes at most {MaxVectors - 1} pages");
        NativeIo.IoVec* iov = stackalloc NativeIo.IoVec[pages.Length + 1];
        fixed (byte* h = head)
        {
            int count = 0;
            if (head.Length > 0) iov[count++] = new NativeIo.IoVec { Base = h, Length = (nuint)head.Length };
            for (int i = 0; i < pages.Length; i++)
            {
                if (pages[i] % PageBytes != 0) throw new ArgumentException($"unaligned page address for a gathered write: {pages[i]:x}");
                iov[count++] = new NativeIo.IoVec { Base = (void*)pages[i], Length = PageBytes };
            }
            WriteVectors(_fd, iov, count, offsetBytes, Name);
        }
    }

    /// <summary>pwritev of <paramref name="count"/> iovecs at <paramref name="offsetBytes"/>, retried past short writes and EINTR until all is written (the iovecs are advanced in place).</summary>
    internal static void WriteVectors(int fd, NativeIo.IoVec* iov, int count, long offsetBytes, string name)
    {
        int first = 0;
        while (first < count)
        {
            nint n = NativeIo.PWriteV(fd, iov + first, count - first, offsetBytes);
            if (n < 0)
            {
                if (Marshal.GetLastPInvokeError() == NativeIo.EINTR) continue;
                throw NativeIo.Error($"pwritev at {offsetBytes}", name);
            }
            if (n == 0) throw new IOException($"pwritev {name} at {offsetBytes}: nothing written");
            offsetBytes += n;
            first = SkipWritten(iov, first, count, n);
        }
    }

    /// <summary>
    /// After <paramref name="written"/> bytes of iovecs [<paramref name="first"/>, <paramref name="count"/>)
    /// were written: skips the vectors written whole and trims the one written in part (in place).
    /// Returns the first vector with bytes left.
    /// </summary>
    internal static int SkipWritten(NativeIo.IoVec* iov, int first, int count, long written)
    {
        while (first < count && written >= (long)iov[first].Length)
        {
            written -= (long)iov[first].Length;
            first++;
        }
        if (written > 0)
        {
            iov[first].Base = (byte*)iov[first].Base + written;
            iov[first].Length -= (nuint)written;
        }
        return first;
    }

    /// <summary>IOV_MAX on Linux.</summary>
    private const int MaxVectors = 1024;

    public void Flush()
    {
        if (NativeIo.FDataSync(_fd) != 0) throw NativeIo.Error("fdatasync", Name);
    }

    /// <summary>Grows the file (used for checkpoint files, which are not preallocated).</summary>
    public static void EnsureFileSize(string path, long sizeBytes)
    {
        var info = new FileInfo(path);
        if (info.Exists && info.Length >= sizeBytes) return;
        using var stream = new FileStream(path, FileMode.OpenOrCreate, FileAccess.Write);
        stream.SetLength(sizeBytes);
    }

    private void Check(long offsetBytes, int length)
    {
        if (_fd < 0) throw new ObjectDisposedException(Name);
        if (offsetBytes % DeviceConstants.SectorBytes != 0 || length % DeviceConstants.SectorBytes != 0)
            throw new ArgumentException($"unaligned device transfer: offset {offsetBytes}, length {length}");
        if (offsetBytes < 0 || offsetBytes + length > SizeBytes)
            throw new ArgumentOutOfRangeException(nameof(offsetBytes), $"transfer {offsetBytes}+{length} beyond device size {SizeBytes}");
    }

    public void Dispose()
    {
        if (_fd >= 0)
        {
            NativeIo.Close(_fd);
            _fd = -1;
        }
    }
}

/// <summary>An exclusive flock on a file in the pool directory: one process owns a pool at a time; the kernel frees it when the process dies.</summary>
public sealed class PoolLock : IDisposable
{
    private int _fd;

    private PoolLock(int fd) => _fd = fd;

    /// <summary>
    /// How long a lock that is held is tried again before the open fails. A lock released a moment
    /// ago can still be held: a process that another thread of the releasing process is starting
    /// holds a copy of every descriptor from its fork until its exec (O_CLOEXEC acts only at exec).
    /// With a process started in a loop beside it, 243 of 300 close-then-open pairs failed at once.
    /// </summary>
    public const int HeldRetryMaxMs = 2000;

    private const int HeldRetryPauseMs = 5;

    public static PoolLock Acquire(string path)
    {
        int fd = NativeIo.Open(path, NativeIo.O_RDWR | NativeIo.O_CREAT | NativeIo.O_CLOEXEC, Convert.ToInt32("644", 8));
        if (fd < 0) throw NativeIo.Error("open", path);
        long start = Environment.TickCount64;
        while (NativeIo.FLock(fd, NativeIo.LOCK_EX | NativeIo.LOCK_NB) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno == NativeIo.EINTR) continue;
            if (errno == NativeIo.EWOULDBLOCK && Environment.TickCount64 - start < HeldRetryMaxMs)
            {
                Thread.Sleep(HeldRetryPauseMs);
                continue;
            }
            NativeIo.Close(fd);
            if (errno == NativeIo.EWOULDBLOCK) throw new IOException($"{path}: the pool is open in another process");
            throw new IOException($"flock {path}: {Marshal.GetPInvokeErrorMessage(errno)}", errno);
        }
        return new PoolLock(fd);
    }

    public void Dispose()
    {
        if (_fd >= 0)
        {
            NativeIo.Close(_fd);
            _fd = -1;
        }
    }
}
