using System.Net;
using System.Net.Sockets;
using Xunit.Abstractions;

namespace Target.Tests.Interop;

/// <summary>
/// The `target` process itself: clean SIGTERM shutdown then an offline `pool check`, a second signal
/// exits at once, --config files, and CLI usage errors (these need no engine).
/// </summary>
[Collection(InteropCollection.Name)]
[Trait("Category", "Interop")]
public sealed class ServeProcessTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Sigterm_shuts_down_cleanly_and_pool_check_passes()
    {
        await using TargetProcess target = await TargetProcess.StartAsync(output);
        await Tool.RunCheckedAsync("qemu-io", ["-f", "raw", target.NbdUri(), "-c", "write -P 0x42 0 8M"], Timeouts.Short, output);

        Assert.Equal(0, await target.StopAsync());
        Assert.Contains("pool closed cleanly", target.Log, StringComparison.Ordinal);
        // The listeners are gone.
        await Assert.ThrowsAnyAsync<SocketException>(async () =>
        {
            using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            await socket.ConnectAsync(target.NbdEndPoint);
        });

        ToolResult check = await TargetProcess.RunCliAsync(["pool", "check", "--pool", target.PoolDirectory], Timeouts.Medium, output);
        Assert.True(check.ExitCode == 0, $"pool check failed:\n{check.Stdout}\n{check.Stderr}");
        Assert.Contains("clean", check.Stdout, StringComparison.Ordinal);

        await target.StartAgainAsync();
        await Tool.RunCheckedAsync("qemu-io", ["-f", "raw", target.NbdUri(), "-c", "read -P 0x42 0 8M"], Timeouts.Short, output);
    }

    [Fact]
    public async Task Second_signal_exits_at_once()
    {
        await using TargetProcess target = await TargetProcess.StartAsync(output, new TargetProcessOptions { WriteMode = "1way-wb" });
        // Leave dirty data in the write cache so the clean shutdown has work to do.
        await Tool.RunCheckedAsync("qemu-io", ["-f", "raw", target.NbdUri(), "-c", "write -P 0x17 0 64M"], Timeouts.Short, output);

        target.SendSignal(TargetProcess.SigTerm);
        target.SendSignal(TargetProcess.SigInt);
        int exitCode = await target.WaitForExitAsync(TimeSpan.FromSeconds(15));
        // 130 when the second signal came first; 0 if the clean shutdown won the race.
        Assert.True(exitCode is 130 or 0, $"exit {exitCode}\n{target.Log}");
    }

    [Fact]
    public async Task Config_file_settings_are_used_and_the_command_line_wins()
    {
        using var temp = new TempDirectory();
        string config = temp["target.json"];
        await File.WriteAllTextAsync(config, """
            {
              // comments are allowed
              "poolSize": "1G",
              "volumes": ["fromfile:128M", { "name": "obj", "size": "64M", "logicalBlockSize": 4096 }],
              "nbd": "127.0.0.1:1",
              "writeMode": "wt",
            }
            """);
        await using TargetProcess target = await TargetProcess.StartAsync(output, new TargetProcessOptions { Volumes = [], ExtraArgs = ["--config", config] });

        ToolResult list = await Tool.RunCheckedAsync("nbdinfo", ["--list", $"nbd://{target.NbdEndPoint}"], Timeouts.Short, output);
        Assert.Contains("export=\"fromfile\"", list.Stdout, StringComparison.Ordinal);
        Assert.Contains("export=\"obj\"", list.Stdout, StringComparison.Ordinal);
        Assert.NotEqual(1, target.NbdEndPoint.Port); // --nbd 127.0.0.1:0 on the command line won
        Assert.Equal(IPAddress.Loopback, target.NbdEndPoint.Address);
    }

    [Fact]
    public async Task Nbd_is_also_served_on_a_unix_socket()
    {
        using var temp = new TempDirectory();
        string socket = temp["nbd.sock"];
        await using TargetProcess target = await TargetProcess.StartAsync(output, new TargetProcessOptions { ExtraArgs = ["--nbd-socket", socket] });
        Assert.Contains($"nbd-socket={socket}", target.Log, StringComparison.Ordinal);

        string uri = $"nbd+unix:///vol0?socket={socket}";
        await Tool.RunCheckedAsync("qemu-io", ["-f", "raw", uri, "-c", "write -P 0x61 1M 64k"], Timeouts.Short, output);
        await Tool.RunCheckedAsync("qemu-io", ["-f", "raw", target.NbdUri(), "-c", "read -P 0x61 1M 64k"], Timeouts.Short, output);
        ToolResult size = await Tool.RunCheckedAsync("nbdinfo", ["--size", uri], Timeouts.Short, output);
        Assert.Equal("10737418240", size.Stdout.Trim());
    }

    [Fact]
    public async Task A_pool_in_use_is_refused_by_a_second_process()
    {
        await using TargetProcess first = await TargetProcess.StartAsync(output);
        ToolResult second = await TargetProcess.RunCliAsync(
            ["serve", "--pool", first.PoolDirectory, "--nbd", "127.0.0.1:0", "--admin", "127.0.0.1:0"], Timeouts.Short, output);
        Assert.Equal(1, second.ExitCode);
        Assert.Contains("serve failed", second.Stdout + second.Stderr, StringComparison.Ordinal);
        // The first one is unharmed.
        await Tool.RunCheckedAsync("nbdinfo", ["--size", first.NbdUri()], Timeouts.Short, output);
    }

    [Theory]
    [InlineData("serve")]                                         // no pool
    [InlineData("serve --pool /tmp/x --volume bad")]              // NAME:SIZE
    [InlineData("serve --pool /tmp/x --pool-size 4Q")]            // bad size
    [InlineData("serve --pool /tmp/x --write-mode wb")]           // needs a partner
    [InlineData("serve --pool /tmp/x --nbd 127.0.0.1:99999")]     // bad port
    [InlineData("nosuchverb")]
    [InlineData("pool check")]                                    // --pool required
    public async Task Usage_errors_exit_2(string commandLine)
    {
        ToolResult result = await TargetProcess.RunCliAsync(commandLine.Split(' '), Timeouts.Short, output);
        Assert.True(result.ExitCode == 2, $"exit {result.ExitCode}\n{result.Stdout}\n{result.Stderr}");
    }

    [Fact]
    public async Task Help_exits_0_and_lists_the_verbs()
    {
        ToolResult result = (await TargetProcess.RunCliAsync(["--help"], Timeouts.Short, output)).AssertSuccess();
        foreach (string verb in new[] { "serve", "stats", "pool", "volume" })
            Assert.Contains(verb, result.Stdout + result.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Client_verbs_report_an_unreachable_server_with_exit_3()
    {
        int port = FreePort();
        ToolResult stats = await TargetProcess.RunCliAsync(["stats", "--admin", $"127.0.0.1:{port}"], Timeouts.Short, output);
        Assert.Equal(3, stats.ExitCode);
        Assert.Contains("cannot reach", stats.Stderr, StringComparison.Ordinal);
        ToolResult list = await TargetProcess.RunCliAsync(["volume", "list", "--admin", $"127.0.0.1:{port}"], Timeouts.Short, output);
        Assert.Equal(3, list.ExitCode);
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
