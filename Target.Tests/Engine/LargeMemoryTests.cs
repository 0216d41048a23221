// LargeMemory: every size comes back zeroed, writable over its whole length and aligned (2 MiB
// from 2 MiB up, a page below); a mapping of 2 MiB or more carries the kernel's huge-page advice
// (VmFlags "hg" in /proc/self/smaps; the kernel records it even where THP is switched off).
using Target.Dedup.Device;

namespace Target.Tests.Engine;

public sealed unsafe class LargeMemoryTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(4095)]
    [InlineData(4096)]
    [InlineData(2 << 20)]
    [InlineData((2 << 20) + 1)]
    [InlineData((10 << 20) + 12345)]
    public void MemoryIsZeroedAlignedAndWritableOverItsLength(int bytes)
    {
        byte* p = LargeMemory.Allocate((nuint)bytes);
        try
        {
            nuint alignment = bytes >= (2 << 20) ? LargeMemory.HugePageBytes : (nuint)Environment.SystemPageSize;
            Assert.Equal(0u, (nuint)p % alignment);
            var span = new Span<byte>(p, bytes);
            Assert.Equal(-1, span.IndexOfAnyExcept((byte)0));
            span.Fill(0xA5);
            Assert.Equal(0xA5, p[bytes - 1]);
        }
        finally
        {
            LargeMemory.Free(p, (nuint)bytes);
        }
    }

    [Fact]
    public void ALargeMappingIsAdvisedForHugePages()
    {
        byte* p = LargeMemory.Allocate(8 << 20);
        try
        {
            string start = ((nuint)p).ToString("x");
            string[] smaps = File.ReadAllLines("/proc/self/smaps");
            int header = Array.FindIndex(smaps, l => l.StartsWith(start + "-", StringComparison.Ordinal));
            Assert.True(header >= 0, $"no mapping starts at {start}");
            string flags = smaps.Skip(header + 1).First(l => l.StartsWith("VmFlags:", StringComparison.Ordinal));
            Assert.Contains(" hg", flags);
        }
        finally
        {
            LargeMemory.Free(p, 8 << 20);
        }
    }
}
