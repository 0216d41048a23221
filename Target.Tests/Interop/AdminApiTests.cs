using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using Xunit.Abstractions;

namespace Target.Tests.Interop;

/// <summary>
/// The admin HTTP API and the CLI verbs that use it, against a real process: create, list, resize and
/// delete a volume; errors map to 400/404/409; NBD sees each change; /metrics is Prometheus text.
/// </summary>
[Collection(InteropCollection.Name)]
[Trait("Category", "Interop")]
public sealed class AdminApiTests(ITestOutputHelper output)
{
    private const long GiB = 1L << 30;

    [Fact]
    public async Task Volumes_can_be_created_listed_resized_and_deleted_over_http()
    {
        await using TargetProcess target = await TargetProcess.StartAsync(output);
        using HttpClient http = AdminHttp.Client(target);
        using var cts = new CancellationTokenSource(Timeouts.Medium);

        JsonElement pool = await AdminHttp.GetJsonAsync(target, "api/pool");
        Assert.True(pool.GetProperty("capacityBytes").GetInt64() > 0);

        using (HttpResponseMessage created = await http.PostAsJsonAsync("api/volumes", new { name = "extra", size = "1G" }))
        {
            Assert.Equal(HttpStatusCode.Created, created.StatusCode);
            JsonElement volume = JsonDocument.Parse(await created.Content.ReadAsStringAsync()).RootElement;
            Assert.Equal("extra", volume.GetProperty("name").GetString());
            Assert.Equal(GiB, volume.GetProperty("sizeBytes").GetInt64());
        }

        JsonElement list = await AdminHttp.GetJsonAsync(target, "api/volumes");
        Assert.Equal(new[] { "extra", "vol0" }, list.EnumerateArray().Select(v => v.GetProperty("name").GetString()!).Order().ToArray());

        await using (RawNbdClient client = await RawNbdClient.ConnectAsync(target.NbdEndPoint, "extra", cts.Token))
            Assert.Equal(GiB, client.SizeBytes);

        using (HttpResponseMessage duplicate = await http.PostAsJsonAsync("api/volumes", new { name = "extra", sizeBytes = GiB }))
            Assert.Equal(HttpStatusCode.Conflict, duplicate.StatusCode);
        using (HttpResponseMessage badSize = await http.PostAsJsonAsync("api/volumes", new { name = "bad", size = "12Q" }))
            Assert.Equal(HttpStatusCode.BadRequest, badSize.StatusCode);
        using (HttpResponseMessage badName = await http.PostAsJsonAsync("api/volumes", new { name = "no/slash", size = "1G" }))
            Assert.Equal(HttpStatusCode.BadRequest, badName.StatusCode);

        using (HttpResponseMessage resized = await http.PostAsJsonAsync("api/volumes/extra/resize", new { size = "2G" }))
            Assert.Equal(HttpStatusCode.OK, resized.StatusCode);
        Assert.Equal(2 * GiB, (await AdminHttp.GetJsonAsync(target, "api/volumes/extra")).GetProperty("sizeBytes").GetInt64());
        await using (RawNbdClient client = await RawNbdClient.ConnectAsync(target.NbdEndPoint, "extra", cts.Token))
            Assert.Equal(2 * GiB, client.SizeBytes);

        using (HttpResponseMessage deleted = await http.DeleteAsync("api/volumes/extra"))
            Assert.Equal(HttpStatusCode.NoContent, deleted.StatusCode);
        using (HttpResponseMessage gone = await http.GetAsync("api/volumes/extra"))
            Assert.Equal(HttpStatusCode.NotFound, gone.StatusCode);
        using (HttpResponseMessage deleteAgain = await http.DeleteAsync("api/volumes/extra"))
            Assert.Equal(HttpStatusCode.NotFound, deleteAgain.StatusCode);
        await Assert.ThrowsAnyAsync<Exception>(async () => await RawNbdClient.ConnectAsync(target.NbdEndPoint, "extra", cts.Token));

        JsonElement stats = await AdminHttp.GetJsonAsync(target, "api/stats");
        foreach (string key in new[] { "physicalBytes", "logicalBytes", "uniqueChunks", "dedupRatio", "ramBytesPerUniqueChunk", "volumes" })
            Assert.True(stats.TryGetProperty(key, out _), $"/api/stats has no '{key}'");

        using HttpResponseMessage metrics = await http.GetAsync("metrics");
        Assert.Equal(HttpStatusCode.OK, metrics.StatusCode);
        Assert.StartsWith("text/plain", metrics.Content.Headers.ContentType?.ToString(), StringComparison.Ordinal);
        string text = await metrics.Content.ReadAsStringAsync();
        Assert.Contains("# TYPE target_volume_latency_seconds histogram", text, StringComparison.Ordinal);
        Assert.Contains("target_volume_latency_seconds_bucket{volume=\"vol0\",op=\"read\",le=\"+Inf\"}", text, StringComparison.Ordinal);
        Assert.Contains("target_pool_dedup_ratio ", text, StringComparison.Ordinal);
        Assert.DoesNotContain("volume=\"extra\"", text, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Cli_volume_verbs_and_stats_work_against_a_running_server()
    {
        await using TargetProcess target = await TargetProcess.StartAsync(output);
        string admin = target.AdminAddress;

        (await Cli(["volume", "create", "--admin", admin, "v2", "--size", "512M"])).AssertSuccess();
        ToolResult list = (await Cli(["volume", "list", "--admin", admin, "--json"])).AssertSuccess();
        JsonElement volumes = JsonDocument.Parse(list.Stdout).RootElement;
        Assert.Contains(volumes.EnumerateArray(), v => v.GetProperty("name").GetString() == "v2" && v.GetProperty("sizeBytes").GetInt64() == 512L << 20);

        (await Cli(["volume", "resize", "--admin", admin, "v2", "--size", "1G"])).AssertSuccess();
        ToolResult table = (await Cli(["volume", "list", "--admin", admin])).AssertSuccess();
        Assert.Contains("v2", table.Stdout, StringComparison.Ordinal);
        Assert.Contains("1G", table.Stdout, StringComparison.Ordinal);

        ToolResult duplicate = await Cli(["volume", "create", "--admin", admin, "v2", "--size", "1G"]);
        Assert.Equal(1, duplicate.ExitCode);
        Assert.Contains("409", duplicate.Stderr, StringComparison.Ordinal);

        (await Cli(["volume", "delete", "--admin", admin, "v2"])).AssertSuccess();
        ToolResult missing = await Cli(["volume", "delete", "--admin", admin, "v2"]);
        Assert.Equal(1, missing.ExitCode);

        ToolResult human = (await Cli(["stats", "--admin", admin])).AssertSuccess();
        Assert.Contains("unique chunks", human.Stdout, StringComparison.Ordinal);
        Assert.Contains("vol0", human.Stdout, StringComparison.Ordinal);
    }

    private Task<ToolResult> Cli(string[] args) => TargetProcess.RunCliAsync(args, Timeouts.Short, output);
}
