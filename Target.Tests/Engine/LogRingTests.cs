// The destager's io_uring path on a real O_DIRECT file in /tmp: batches gathered from a header
// buffer and scattered pages land where they were aimed, in order, across two groups whose
// flushes drain them; a write the kernel refuses (a page address O_DIRECT cannot use) is an
// IOException from WaitGroup, not a silent success; and a drain leaves nothing in flight.
// The fallback without the ring (FileDevice.WriteGathered, thread-pool tasks) stores a pool's
// writes just as well.
using Target.Dedup;
using Target.Dedup.Device;
using static Target.Tests.Engine.EngineTest;

namespace Target.Tests.Engine;

public sealed class LogRingTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private const int Page = DeviceConstants.SectorBytes;

    /// <summary>A log ring on <paramref name="device"/>; this machine has io_uring, so its absence fails the test.</summary>
    private static LogRing RingOn(FileDevice device, int slots, int vectorsPerSlot, int groups) =>
        LogRing.TryCreate(device, slots, vectorsPerSlot, groups, out string? failure)
            ?? throw new InvalidOperationException("io_uring is required on this machine: " + failure);

    [Fact]
    public unsafe void GatheredBatchesOfTwoGroupsLandWhereTheyWereAimed()
    {
        using var dir = new TempPoolDir();
        using FileDevice device = FileDevice.Open(dir.DeviceFile, direct: true, createSizeBytes: 64 * Page);
        using LogRing ring = RingOn(device, slots: 4, vectorsPerSlot: 8, groups: 2);
        using var headers = new AlignedBuffer(4 * Page);
        using var pages = new AlignedBuffer(16 * Page);
        for (int i = 0; i < 4; i++) headers.Span.Slice(i * Page, Page).Fill((byte)(0xA0 + i));
        for (int i = 0; i < 16; i++) pages.Span.Slice(i * Page, Page).Fill((byte)(0x10 + i));
        nint Addr(int page) => (nint)((byte*)pages.Pointer + (long)page * Page);

        // Group 0: slots 0 and 1, no flush; group 1: slots 2 and 3, then a flush. Pages go in a scattered order.
        int[][] order = [[5, 2, 9], [0], [15, 14, 13, 12], [7, 3]];
        long[] at = [0, 4, 6, 11];
        for (int slot = 0; slot < 4; slot++)
        {
            nint[] addresses = order[slot].Select(Addr).ToArray();
            ring.SubmitWrite(slot, at[slot] * Page, headers.Span.Slice(slot * Page, Page), addresses);
            if (slot == 3) ring.SubmitFlush(1);
        }
        ring.WaitGroup(0, 0, 2, flushed: false);
        ring.WaitGroup(1, 2, 2, flushed: true);
        Assert.Equal(0, ring.Outstanding);

        using var read = new AlignedBuffer(Page);
        for (int slot = 0; slot < 4; slot++)
        {
            device.Read(at[slot] * Page, read.Span);
            Assert.True(read.Span.IndexOfAnyExcept((byte)(0xA0 + slot)) < 0, $"header of slot {slot}");
            for (int k = 0; k < order[slot].Length; k++)
            {
                device.Read((at[slot] + 1 + k) * Page, read.Span);
                Assert.True(read.Span.IndexOfAnyExcept((byte)(0x10 + order[slot][k])) < 0, $"page {k} of slot {slot}");
            }
        }
    }

    [Fact]
    public unsafe void AWriteTheKernelRefusesIsAnErrorAndTheRingDrains()
    {
        using var dir = new TempPoolDir();
        using FileDevice device = FileDevice.Open(dir.DeviceFile, direct: true, createSizeBytes: 16 * Page);
        using LogRing ring = RingOn(device, slots: 2, vectorsPerSlot: 4, groups: 1);
        using var header = new AlignedBuffer(Page);
        using var pages = new AlignedBuffer(2 * Page);
        // O_DIRECT wants memory aligned to the disk's sector: a page address 1 byte in is refused (EINVAL).
        nint misaligned = (nint)((byte*)pages.Pointer + 1);
        ring.SubmitWrite(0, 0, header.Span, [(nint)pages.Pointer]);
        ring.SubmitWrite(1, 2 * Page, header.Span, [misaligned]);
        ring.SubmitFlush(0);
        IOException e = Assert.Throws<IOException>(() => ring.WaitGroup(0, 0, 2, flushed: true));
        Assert.Contains("journal write", e.Message);
        ring.Drain();
        Assert.Equal(0, ring.Outstanding);
        Assert.Throws<ArgumentException>(() => ring.SubmitWrite(0, 16 * Page, header.Span, []));
    }

    [Fact]
    public unsafe void AGatheredWriteWithoutTheRingLandsAsOneRange()
    {
        using var dir = new TempPoolDir();
        using FileDevice device = FileDevice.Open(dir.DeviceFile, direct: true, createSizeBytes: 16 * Page);
        using var header = new AlignedBuffer(2 * Page);
        using var pages = new AlignedBuffer(4 * Page);
        header.Span.Fill(0xEE);
        for (int i = 0; i < 4; i++) pages.Span.Slice(i * Page, Page).Fill((byte)(0x30 + i));
        nint[] order = new[] { 3, 1, 2 }.Select(i => (nint)((byte*)pages.Pointer + (long)i * Page)).ToArray();
        device.WriteGathered(5 * Page, header.Span, order);
        using var read = new AlignedBuffer(5 * Page);
        device.Read(5 * Page, read.Span);
        Assert.True(read.Span[..(2 * Page)].IndexOfAnyExcept((byte)0xEE) < 0);
        byte[] expected = [0x33, 0x31, 0x32];
        for (int k = 0; k < 3; k++) Assert.True(read.Span.Slice((2 + k) * Page, Page).IndexOfAnyExcept(expected[k]) < 0, $"page {k}");
    }

    [Fact]
    public async Task APoolWithoutTheRingStoresAndReplaysItsWrites()
    {
        using var dir = new TempPoolDir();
        PoolOptions options = Options(dir.Path, cachePages: 2048) with { NoLogRing = true };
        await using (Pool pool = Pool.Open(options))
        {
            Volume v = await pool.CreateVolumeAsync("v", 16 << 20, 512, CancellationToken.None);
            for (long block = 0; block < 1200; block++) await WriteAsync(v, block * Chunk, Pattern(block, 1));
            await v.FlushAsync(CancellationToken.None);
            for (long block = 0; block < 1200; block += 3) await WriteAsync(v, block * Chunk, Pattern(block, 2));
        }
        await using (Pool pool = Pool.Open(options))
        {
            pool.TryGetVolume("v", out Volume v);
            for (long block = 0; block < 1200; block++)
                Assert.Equal(Pattern(block, block % 3 == 0 ? 2 : 1), await ReadAsync(v, block * Chunk, Chunk));
        }
        await AssertCleanAsync(dir.Path, output);
    }

    [Fact]
    public unsafe void AShortWriteSkipsTheVectorsWrittenWholeAndTrimsThePartOne()
    {
        // What FileDevice.WriteVectors and LogRing.WriteRest go on from after a short write.
        byte* memory = stackalloc byte[16];
        NativeIo.IoVec* iov = stackalloc NativeIo.IoVec[3];
        iov[0] = new NativeIo.IoVec { Base = memory, Length = 4096 };
        iov[1] = new NativeIo.IoVec { Base = memory + 4, Length = 8192 };
        iov[2] = new NativeIo.IoVec { Base = memory + 8, Length = 4096 };
        int first = FileDevice.SkipWritten(iov, 0, 3, 4096 + 1000);
        Assert.Equal(1, first);
        Assert.Equal((nint)(memory + 4 + 1000), (nint)iov[1].Base);
        Assert.Equal(8192u - 1000, (uint)iov[1].Length);
        Assert.Equal(3, FileDevice.SkipWritten(iov, first, 3, 8192 - 1000 + 4096));
    }
}
