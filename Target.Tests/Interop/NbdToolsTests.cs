using System.Globalization;
using System.Text.Json;
using Xunit.Abstractions;

namespace Target.Tests.Interop;

/// <summary>
/// libnbd's clients against a real `target serve`: nbdinfo (list, details, --map) and an nbdcopy round trip.
/// Invariants checked: export names/sizes/flags as configured; unwritten ranges are holes that read as
/// zeros; data copied in comes back byte for byte, also after a clean restart.
/// </summary>
[Collection(InteropCollection.Name)]
[Trait("Category", "Interop")]
public sealed class NbdToolsTests(ITestOutputHelper output)
{
    private const long GiB = 1L << 30;
    private const long MiB = 1L << 20;

    [Fact]
    public async Task Nbdinfo_lists_exports_and_shows_details()
    {
        await using TargetProcess target = await TargetProcess.StartAsync(output, new TargetProcessOptions { Volumes = ["vol0:10G", "small:64M:4096"] });

        ToolResult list = await Tool.RunCheckedAsync("nbdinfo", ["--list", $"nbd://{target.NbdEndPoint}"], Timeouts.Short, output);
        Assert.Contains("export=\"vol0\"", list.Stdout, StringComparison.Ordinal);
        Assert.Contains("export=\"small\"", list.Stdout, StringComparison.Ordinal);

        ToolResult details = await Tool.RunCheckedAsync("nbdinfo", ["--json", target.NbdUri("vol0")], Timeouts.Short, output);
        JsonElement export = JsonDocument.Parse(details.Stdout).RootElement.GetProperty("exports")[0];
        Assert.Equal("vol0", export.GetProperty("export-name").GetString());
        Assert.Equal(10 * GiB, export.GetProperty("export-size").GetInt64());
        Assert.False(export.GetProperty("is_read_only").GetBoolean());
        Assert.True(export.GetProperty("can_flush").GetBoolean(), "a write-back volume must advertise flush");
        Assert.True(export.GetProperty("can_trim").GetBoolean());
        Assert.True(export.GetProperty("can_zero").GetBoolean());

        ToolResult small = await Tool.RunCheckedAsync("nbdinfo", ["--size", target.NbdUri("small")], Timeouts.Short, output);
        Assert.Equal(64 * MiB, long.Parse(small.Stdout.Trim(), CultureInfo.InvariantCulture));

        ToolResult missing = await Tool.RunAsync("nbdinfo", [target.NbdUri("nosuch")], Timeouts.Short, output);
        Assert.NotEqual(0, missing.ExitCode);
    }

    [Fact]
    public async Task Nbdinfo_map_shows_data_where_written_and_holes_elsewhere()
    {
        await using TargetProcess target = await TargetProcess.StartAsync(output, new TargetProcessOptions { Volumes = ["vol0:256M"] });

        List<(long Offset, long Length, int Type)> empty = await MapAsync(target);
        Assert.All(empty, e => Assert.True((e.Type & 1) == 1, $"fresh volume has a non-hole extent at {e.Offset}"));
        Assert.Equal(256 * MiB, empty.Sum(e => e.Length));

        // 1 MiB of data at 16 MiB, flushed.
        await Tool.RunCheckedAsync("qemu-io", ["-f", "raw", target.NbdUri(), "-c", "write -P 0x5a 16M 1M", "-c", "flush"], Timeouts.Short, output);

        List<(long Offset, long Length, int Type)> map = await MapAsync(target);
        Assert.Equal(256 * MiB, map.Sum(e => e.Length));
        (long Offset, long Length, int Type) data = Assert.Single(map, e => (e.Type & 1) == 0);
        Assert.Equal(16 * MiB, data.Offset);
        Assert.Equal(1 * MiB, data.Length);
    }

    [Fact]
    public async Task Nbdcopy_round_trip_of_256MiB_is_byte_exact_and_survives_restart()
    {
        const long sizeBytes = 256 * MiB;
        using var temp = new TempDirectory();
        await using TargetProcess target = await TargetProcess.StartAsync(output, new TargetProcessOptions { Volumes = ["rt:256M"] });

        string source = temp["source.img"];
        TestData.WriteRandomFile(source, seed: 2561, sizeBytes, output);

        await Tool.RunCheckedAsync("nbdcopy", ["--flush", source, target.NbdUri("rt")], Timeouts.Medium, output);

        string back = temp["back.img"];
        await Tool.RunCheckedAsync("nbdcopy", [target.NbdUri("rt"), back], Timeouts.Medium, output);
        Assert.Equal(-1, TestData.FirstDifference(source, back));

        Assert.Equal(0, await target.StopAsync());
        await target.StartAgainAsync();

        File.Delete(back);
        await Tool.RunCheckedAsync("nbdcopy", [target.NbdUri("rt"), back], Timeouts.Medium, output);
        Assert.Equal(-1, TestData.FirstDifference(source, back));
    }

    /// <summary>nbdinfo --map lines: offset, length, type (bit 0 hole, bit 1 zero), description.</summary>
    private async Task<List<(long Offset, long Length, int Type)>> MapAsync(TargetProcess target)
    {
        ToolResult map = await Tool.RunCheckedAsync("nbdinfo", ["--map", target.NbdUri()], Timeouts.Short, output);
        output.WriteLine(map.Stdout);
        var extents = new List<(long, long, int)>();
        foreach (string line in map.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            string[] fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            extents.Add((long.Parse(fields[0], CultureInfo.InvariantCulture), long.Parse(fields[1], CultureInfo.InvariantCulture), int.Parse(fields[2], CultureInfo.InvariantCulture)));
        }
        Assert.NotEmpty(extents);
        return extents;
    }
}
