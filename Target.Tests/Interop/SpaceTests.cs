using System.Text.Json;
using Xunit.Abstractions;

namespace Target.Tests.Interop;

/// <summary>
/// Space management seen from outside, against a real `target serve` and fio's nbd engine:
/// a 512 MiB volume in a 1 GiB pool takes 5 GiB of random unique 4 KiB overwrites without an
/// error, the cleaner keeps it running, and once the host pauses the space in use falls to
/// at most 1.2x the live data; `target pool check` is clean afterwards.
/// </summary>
[Collection(InteropCollection.Name)]
[Trait("Category", "Interop")]
public sealed class SpaceTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Five_GiB_of_overwrites_through_a_1GiB_pool_keep_running_and_compact()
    {
        await using TargetProcess target = await TargetProcess.StartAsync(output, new TargetProcessOptions { PoolSize = "1G", Volumes = ["vol0:512M"] });

        // Fill the volume once, then overwrite at random with unique data (refill_buffers: fresh random bytes per write).
        ToolResult fill = await Tool.RunAsync("fio",
            ["--name=fill", "--ioengine=nbd", $"--uri={target.NbdUri()}", "--rw=write", "--bs=1M", "--iodepth=8", "--size=512M",
             "--refill_buffers", "--randrepeat=0", "--output-format=json"], Timeouts.Long, output);
        fill.AssertSuccess();
        ToolResult overwrite = await Tool.RunAsync("fio",
            ["--name=overwrite", "--ioengine=nbd", $"--uri={target.NbdUri()}", "--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=512M",
             "--io_size=5G", "--refill_buffers", "--randrepeat=0", "--norandommap", "--output-format=json"], TimeSpan.FromMinutes(15), output);
        overwrite.AssertSuccess();
        JsonElement job = JsonDocument.Parse(overwrite.Stdout[overwrite.Stdout.IndexOf('{')..]).RootElement.GetProperty("jobs")[0];
        Assert.Equal(0, job.GetProperty("error").GetInt32());
        long written = job.GetProperty("write").GetProperty("io_bytes").GetInt64();
        Assert.Equal(5L << 30, written);

        JsonElement stats = await AdminHttp.WaitForStatsAsync(target, s =>
            s.GetProperty("capacityBytes").GetInt64() - s.GetProperty("freeBytes").GetInt64() <= s.GetProperty("liveBytes").GetInt64() * 12 / 10,
            Timeouts.Medium);
        long live = stats.GetProperty("liveBytes").GetInt64();
        long used = stats.GetProperty("capacityBytes").GetInt64() - stats.GetProperty("freeBytes").GetInt64();
        output.WriteLine($"fio wrote {written >> 20} MiB at {job.GetProperty("write").GetProperty("iops").GetDouble():F0} IOPS; " +
                         $"live {live >> 20} MiB, in use {used >> 20} MiB ({(double)used / live:F2}x), write amplification {stats.GetProperty("writeAmplification").GetDouble():F2}, " +
                         $"cleaner moved {stats.GetProperty("gcBytesMoved").GetInt64() >> 20} MiB from {stats.GetProperty("gcSegmentsCleaned").GetInt64()} segments");
        Assert.InRange(live, 500L << 20, 512L << 20);
        Assert.True(used <= live * 12 / 10, $"space in use {used} is more than 1.2x the live data {live}");

        Assert.Equal(0, await target.StopAsync());
        ToolResult check = await TargetProcess.RunCliAsync(["pool", "check", "--pool", target.PoolDirectory], Timeouts.Medium, output);
        check.AssertSuccess();
    }
}
