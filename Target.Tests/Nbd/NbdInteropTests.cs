// Interop with libnbd's tools (Debian package libnbd-bin) against the in-process server.
// A missing tool fails the test with the command that installs it; it never passes silently.
using System.Diagnostics;
using System.Text.Json;
using Target.Protocol.Nbd;
using Target.Tests.Support;
using Xunit.Abstractions;

namespace Target.Tests.Nbd;

public sealed class NbdInteropTests(ITestOutputHelper output)
{
    private const string InstallHint = "install with: apt-get install -y libnbd-bin";

    private static string RequireTool(string name)
    {
        foreach (string directory in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin").Split(':'))
        {
            string candidate = Path.Combine(directory, name);
            if (File.Exists(candidate)) return candidate;
        }
        Assert.Fail($"{name} not found; {InstallHint}");
        return "";
    }

    private async Task<(int ExitCode, string StdOut, string StdErr)> RunAsync(string tool, params string[] arguments)
    {
        var start = new ProcessStartInfo(RequireTool(tool)) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string argument in arguments) start.ArgumentList.Add(argument);
        using Process process = Process.Start(start)!;
        Task<string> stdout = process.StandardOutput.ReadToEndAsync();
        Task<string> stderr = process.StandardError.ReadToEndAsync();
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"{tool} did not finish within 30 s");
        }
        output.WriteLine($"$ {tool} {string.Join(' ', arguments)} -> {process.ExitCode}\n{await stdout}\n{await stderr}");
        return (process.ExitCode, await stdout, await stderr);
    }

    [Fact]
    public async Task Nbdinfo_json_reports_size_flags_block_sizes_and_base_allocation()
    {
        var disk = new MemoryVolume("disk", 16 << 20);
        await using var server = new NbdTestServer(output, null, null, new NbdExport("disk", disk, "interop disk", false));
        (int exitCode, string json, _) = await RunAsync("nbdinfo", "--json", $"nbd://127.0.0.1:{server.EndPoint.Port}/disk");
        Assert.Equal(0, exitCode);

        using JsonDocument document = JsonDocument.Parse(json);
        Assert.Equal("newstyle-fixed", document.RootElement.GetProperty("protocol").GetString());
        JsonElement export = document.RootElement.GetProperty("exports")[0];
        Assert.Equal("disk", export.GetProperty("export-name").GetString());
        Assert.Equal("interop disk", export.GetProperty("description").GetString());
        Assert.Equal(16L << 20, export.GetProperty("export-size").GetInt64());
        Assert.False(export.GetProperty("is_read_only").GetBoolean());
        Assert.False(export.GetProperty("is_rotational").GetBoolean());
        foreach (string capability in new[] { "can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero", "can_cache", "can_df", "can_multi_conn" })
            Assert.True(export.GetProperty(capability).GetBoolean(), capability);
        Assert.Equal(1, export.GetProperty("block_size_minimum").GetInt64());
        Assert.Equal(4096, export.GetProperty("block_size_preferred").GetInt64());
        Assert.Equal(NbdLimits.MaxRequestBytes, export.GetProperty("block_size_maximum").GetInt64());
        Assert.Contains(export.GetProperty("contexts").EnumerateArray(), c => c.GetString() == "base:allocation");
    }

    [Fact]
    public async Task Nbdinfo_json_reports_a_read_only_export()
    {
        var disk = new MemoryVolume("ro", 1 << 20);
        await using var server = new NbdTestServer(output, null, null, new NbdExport("ro", disk, "", true));
        (int exitCode, string json, _) = await RunAsync("nbdinfo", "--json", $"nbd://127.0.0.1:{server.EndPoint.Port}/ro");
        Assert.Equal(0, exitCode);
        using JsonDocument document = JsonDocument.Parse(json);
        JsonElement export = document.RootElement.GetProperty("exports")[0];
        Assert.Equal(1L << 20, export.GetProperty("export-size").GetInt64());
        Assert.True(export.GetProperty("is_read_only").GetBoolean());
        Assert.False(export.GetProperty("can_trim").GetBoolean());
        Assert.False(export.GetProperty("can_zero").GetBoolean());
    }

    [Fact]
    public async Task Nbdinfo_map_shows_data_and_holes_from_block_status()
    {
        var disk = new MemoryVolume("disk", 1 << 20);
        disk.Fill(64 * 1024, new byte[] { 1, 2, 3 });
        await using var server = new NbdTestServer(output, null, null, new NbdExport("disk", disk, "", false));
        (int exitCode, string map, _) = await RunAsync("nbdinfo", "--map", $"nbd://127.0.0.1:{server.EndPoint.Port}/disk");
        Assert.Equal(0, exitCode);
        string[][] lines = map.Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => l.Split(' ', '\t').Where(p => p.Length > 0).ToArray()).ToArray();
        Assert.Equal(3, lines.Length);
        Assert.Equal(["0", "65536", "3"], lines[0].Take(3));
        Assert.Equal(["65536", "4096", "0"], lines[1].Take(3));
        Assert.Equal(["69632", (1048576 - 69632).ToString(), "3"], lines[2].Take(3));
    }

    [Fact]
    public async Task Nbdcopy_round_trips_an_image_through_the_server()
    {
        Random random = TestSeed.Create(output);
        var disk = new MemoryVolume("disk", 4 << 20);
        await using var server = new NbdTestServer(output, null, null, new NbdExport("disk", disk, "", false));
        string source = Path.GetTempFileName();
        string copy = Path.GetTempFileName();
        try
        {
            var image = new byte[4 << 20];
            random.NextBytes(image.AsSpan(0, 1 << 20));
            random.NextBytes(image.AsSpan(3 << 20, 4096));
            await File.WriteAllBytesAsync(source, image);
            string uri = $"nbd://127.0.0.1:{server.EndPoint.Port}/disk";
            Assert.Equal(0, (await RunAsync("nbdcopy", source, uri)).ExitCode);
            Assert.True(image.AsSpan().SequenceEqual(disk.Snapshot(0, image.Length)), "volume differs from the source image");
            Assert.Equal(0, (await RunAsync("nbdcopy", uri, copy)).ExitCode);
            byte[] copied = await File.ReadAllBytesAsync(copy);
            Assert.True(image.AsSpan().SequenceEqual(copied), "copy back differs from the source image");
        }
        finally
        {
            File.Delete(source);
            File.Delete(copy);
        }
    }
}
