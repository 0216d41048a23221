// Zeroed native memory for the big slabs and tables (the write and read caches, the dedup index,
// the read cache's id table): an anonymous mapping of its own, 2 MiB-aligned and advised for
// transparent huge pages. On this project's VMs a 4 KiB page fault costs 12-15 us (first touch of
// 1 GiB: 3-4 s) and 2 MiB pages take a fraction of that per byte (0.25 s); they also mean fewer
// TLB misses on the random accesses these structures get (docs/PERFORMANCE.md measures both).
// Where THP is off or MADV_HUGEPAGE fails, the memory is ordinary 4 KiB pages: the advice is a
// hint, never a requirement.
using System.Runtime.InteropServices;

namespace Target.Dedup.Device;

public static unsafe class LargeMemory
{
    public const nuint HugePageBytes = 2 << 20;

    /// <summary>Zeroed memory of at least <paramref name="bytes"/>, 2 MiB-aligned when it is 2 MiB or more; free with <see cref="Free"/>.</summary>
    public static byte* Allocate(nuint bytes)
    {
        ArgumentOutOfRangeException.ThrowIfZero(bytes);
        nuint length = MappedLength(bytes);
        nuint alignment = length >= HugePageBytes ? HugePageBytes : (nuint)Environment.SystemPageSize;
        nuint reserved = length + alignment;
        byte* raw = (byte*)NativeIo.Mmap(null, reserved, NativeIo.PROT_READ | NativeIo.PROT_WRITE,
            NativeIo.MAP_PRIVATE | NativeIo.MAP_ANONYMOUS, -1, 0);
        if (raw == (byte*)-1)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new OutOfMemoryException($"mmap of {bytes} bytes: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})");
        }
        byte* aligned = (byte*)(((nuint)raw + alignment - 1) & ~(alignment - 1));
        nuint head = (nuint)(aligned - raw);
        nuint tail = reserved - head - length;
        if (head > 0) NativeIo.Munmap(raw, head);
        if (tail > 0) NativeIo.Munmap(aligned + length, tail);
        if (length >= HugePageBytes) NativeIo.Madvise(aligned, length, NativeIo.MADV_HUGEPAGE);
        return aligned;
    }

    /// <summary>Returns memory from <see cref="Allocate"/>; <paramref name="bytes"/> is the length asked for.</summary>
    public static void Free(void* pointer, nuint bytes)
    {
        if (pointer != null) NativeIo.Munmap(pointer, MappedLength(bytes));
    }

    private static nuint MappedLength(nuint bytes)
    {
        nuint page = (nuint)Environment.SystemPageSize;
        return (bytes + page - 1) & ~(page - 1);
    }
}
