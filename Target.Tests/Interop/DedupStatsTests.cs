using System.Globalization;
using System.Text.Json;
using Xunit.Abstractions;

namespace Target.Tests.Interop;

/// <summary>
/// Dedup seen from outside: the same 64 MiB of random data written at two offsets is stored once.
/// `target stats --json` reports about 16,384 unique 4 KiB chunks (not 32,768), logical twice physical;
/// /metrics agrees and counts the writes.
/// </summary>
[Collection(InteropCollection.Name)]
[Trait("Category", "Interop")]
public sealed class DedupStatsTests(ITestOutputHelper output)
{
    private const int DataBytes = 64 << 20;
    private const int ChunkBytes = 4096;
    private const long UniqueExpected = DataBytes / ChunkBytes; // 16,384

    [Fact]
    public async Task Same_64MiB_at_two_offsets_is_stored_once()
    {
        await using TargetProcess target = await TargetProcess.StartAsync(output, new TargetProcessOptions { Volumes = ["vol0:4G"] });
        using var cts = new CancellationTokenSource(Timeouts.Medium);
        byte[] data = TestData.Random(seed: 6464, DataBytes, output);

        await using (RawNbdClient client = await RawNbdClient.ConnectAsync(target.NbdEndPoint, "vol0", cts.Token))
        {
            await client.WriteAllAsync(0, data, 1 << 20, cts.Token);
            await client.WriteAllAsync(1L << 30, data, 1 << 20, cts.Token);
            await client.FlushAsync(cts.Token);
        }

        await AdminHttp.WaitForStatsAsync(target, s => s.GetProperty("uniqueChunks").GetInt64() >= UniqueExpected, Timeouts.Short);

        ToolResult cli = await TargetProcess.RunCliAsync(["stats", "--admin", target.AdminAddress, "--json"], Timeouts.Short, output);
        cli.AssertSuccess();
        JsonElement stats = JsonDocument.Parse(cli.Stdout).RootElement;
        output.WriteLine(cli.Stdout);

        long unique = stats.GetProperty("uniqueChunks").GetInt64();
        Assert.InRange(unique, UniqueExpected, UniqueExpected + 64);
        long physical = stats.GetProperty("physicalBytes").GetInt64();
        long logical = stats.GetProperty("logicalBytes").GetInt64();
        Assert.InRange(physical, (long)DataBytes, DataBytes + 64L * ChunkBytes);
        Assert.InRange(logical, 2L * DataBytes, 2L * DataBytes + 64L * ChunkBytes);
        Assert.InRange(stats.GetProperty("dedupRatio").GetDouble(), 1.9, 2.1);
        Assert.True(stats.GetProperty("ramBytesPerUniqueChunk").GetDouble() > 0);
        JsonElement volume = Assert.Single(stats.GetProperty("volumes").EnumerateArray());
        Assert.Equal("vol0", volume.GetProperty("name").GetString());

        using HttpClient http = AdminHttp.Client(target);
        string metrics = await http.GetStringAsync("metrics");
        Assert.Equal(unique, (long)MetricValue(metrics, "target_pool_unique_chunks"));
        Assert.True(MetricValue(metrics, "target_volume_ops_total{volume=\"vol0\",op=\"write\"}") >= 128);
        Assert.Equal(2.0 * DataBytes, MetricValue(metrics, "target_volume_bytes_total{volume=\"vol0\",op=\"write\"}"));
        Assert.True(MetricValue(metrics, "target_volume_latency_seconds_count{volume=\"vol0\",op=\"write\"}") >= 128);
        Assert.True(MetricValue(metrics, "target_volume_ops_total{volume=\"vol0\",op=\"flush\"}") >= 1);
    }

    private static double MetricValue(string metrics, string series)
    {
        foreach (string line in metrics.Split('\n'))
            if (line.StartsWith(series + " ", StringComparison.Ordinal))
                return double.Parse(line[(series.Length + 1)..], CultureInfo.InvariantCulture);
        Assert.Fail($"no series {series} in /metrics");
        return 0;
    }
}
