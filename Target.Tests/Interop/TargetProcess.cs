using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Runtime.InteropServices;
using System.Text.RegularExpressions;
using Xunit.Abstractions;

namespace Target.Tests.Interop;

public sealed record TargetProcessOptions
{
    /// <summary>Pool directory; null makes a fresh one under /tmp that is deleted at dispose.</summary>
    public string? PoolDirectory { get; init; }

    public string PoolSize { get; init; } = "2G";

    public IReadOnlyList<string> Volumes { get; init; } = ["vol0:10G"];

    /// <summary>wt or 1way-wb; null leaves the server's default.</summary>
    public string? WriteMode { get; init; }

    public IReadOnlyList<string> ExtraArgs { get; init; } = [];

    public TimeSpan StartTimeout { get; init; } = TimeSpan.FromSeconds(90);
}

/// <summary>
/// A real <c>target serve</c> child process on free loopback ports (port 0, then the
/// "listening nbd=... admin=..." line), over a temp pool under /tmp (ext4: O_DIRECT works).
/// Stop() = SIGTERM and wait (clean shutdown), Kill() = SIGKILL; StartAgainAsync() reopens the same
/// pool. Dispose kills whatever runs and deletes the temp pool. A static guard kills children if the
/// test host exits first.
/// </summary>
public sealed partial class TargetProcess : IAsyncDisposable
{
    public const int SigInt = 2;
    public const int SigKill = 9;
    public const int SigTerm = 15;

    private static readonly ConcurrentDictionary<int, Process> s_live = new();

    private readonly TargetProcessOptions _options;
    private readonly bool _ownsPool;
    private readonly ITestOutputHelper? _output;
    private readonly ConcurrentQueue<string> _log = new();
    private Process? _process;
    private TaskCompletionSource<string> _listening = NewListening();

    static TargetProcess()
    {
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            foreach (Process process in s_live.Values)
            {
                try
                {
                    process.Kill();
                }
                catch (InvalidOperationException)
                {
                }
            }
        };
    }

    private TargetProcess(TargetProcessOptions options, ITestOutputHelper? output)
    {
        _options = options;
        _output = output;
        _ownsPool = options.PoolDirectory is null;
        PoolDirectory = options.PoolDirectory ?? NewTempDirectory("target-pool-");
    }

    public string PoolDirectory { get; }

    public IPEndPoint NbdEndPoint { get; private set; } = null!;

    public IPEndPoint AdminEndPoint { get; private set; } = null!;

    /// <summary>The iSCSI portal (the process always listens on a free loopback port for iSCSI too).</summary>
    public IPEndPoint IscsiEndPoint { get; private set; } = null!;

    /// <summary>libiscsi / QEMU URL of a volume's LUN 0: iscsi://HOST:PORT/iqn.2026-11.io.target:VOLUME/0.</summary>
    public string IscsiUri(string volume = "vol0") => $"iscsi://{IscsiEndPoint}/{IscsiTargetName(volume)}/0";

    public static string IscsiTargetName(string volume) => "iqn.2026-11.io.target:" + volume;

    public string AdminAddress => AdminEndPoint.ToString();

    public Uri AdminUri => new($"http://{AdminEndPoint}/");

    public int Pid => _process?.Id ?? 0;

    public bool IsRunning => _process is { HasExited: false };

    public string NbdUri(string volume = "vol0") => $"nbd://{NbdEndPoint}/{volume}";

    /// <summary>Everything the process printed so far (all its runs).</summary>
    public string Log => string.Join('\n', _log);

    public static async Task<TargetProcess> StartAsync(ITestOutputHelper? output = null, TargetProcessOptions? options = null)
    {
        var target = new TargetProcess(options ?? new TargetProcessOptions(), output);
        try
        {
            await target.StartAgainAsync();
        }
        catch
        {
            await target.DisposeAsync();
            throw;
        }
        return target;
    }

    /// <summary>Starts <c>target serve</c> on the same pool (after Stop or Kill); ports are new.</summary>
    public async Task StartAgainAsync()
    {
        if (IsRunning)
            throw new InvalidOperationException("target is still running");

        var args = new List<string> { "serve", "--pool", PoolDirectory, "--pool-size", _options.PoolSize, "--nbd", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--iscsi", "127.0.0.1:0" };
        foreach (string volume in _options.Volumes)
            args.AddRange(["--volume", volume]);
        if (_options.WriteMode is not null)
            args.AddRange(["--write-mode", _options.WriteMode]);
        args.AddRange(_options.ExtraArgs);

        _listening = NewListening();
        Process process = StartTarget(args, redirect: true);
        _process = process;
        s_live[process.Id] = process;
        process.OutputDataReceived += (_, e) => OnLine(e.Data);
        process.ErrorDataReceived += (_, e) => OnLine(e.Data);
        process.EnableRaisingEvents = true;
        process.Exited += (_, _) => _listening.TrySetException(new InvalidOperationException("target exited before it listened"));
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();

        string line;
        try
        {
            line = await _listening.Task.WaitAsync(_options.StartTimeout);
        }
        catch (Exception e) when (e is TimeoutException or InvalidOperationException)
        {
            KillQuietly();
            throw new InvalidOperationException($"target serve did not start ({e.Message}); its log:\n{Log}", e);
        }

        Dictionary<string, string> listeners = ParseListening(line);
        NbdEndPoint = IPEndPoint.Parse(listeners["nbd"]);
        AdminEndPoint = IPEndPoint.Parse(listeners["admin"]);
        IscsiEndPoint = IPEndPoint.Parse(listeners["iscsi"]);
        Tool.Log(_output, $"target pid {process.Id} nbd={NbdEndPoint} iscsi={IscsiEndPoint} admin={AdminEndPoint} pool={PoolDirectory}");
    }

    /// <summary>Parses "listening nbd=127.0.0.1:1234 admin=127.0.0.1:5678" (anywhere in a log line).</summary>
    public static Dictionary<string, string> ParseListening(string line)
    {
        Match match = ListeningPattern().Match(line);
        if (!match.Success)
            throw new FormatException($"not a listening line: {line}");
        return match.Groups[1].Value.Split(' ', StringSplitOptions.RemoveEmptyEntries)
            .Select(pair => pair.Split('=', 2))
            .ToDictionary(pair => pair[0], pair => pair[1]);
    }

    [GeneratedRegex(@"\blistening ((?:[a-z-]+=\S+ ?)+)$")]
    private static partial Regex ListeningPattern();

    /// <summary>SIGTERM, then waits for a clean exit; returns the exit code.</summary>
    public async Task<int> StopAsync(TimeSpan? timeout = null)
    {
        Process process = _process ?? throw new InvalidOperationException("not started");
        if (process.HasExited)
            return process.ExitCode;
        Signal(process.Id, SigTerm);
        using var cts = new CancellationTokenSource(timeout ?? TimeSpan.FromSeconds(60));
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            KillQuietly();
            Assert.Fail($"target did not exit within {(timeout ?? TimeSpan.FromSeconds(60)).TotalSeconds} s of SIGTERM; its log:\n{Log}");
        }
        process.WaitForExit();
        s_live.TryRemove(process.Id, out _);
        Tool.Log(_output, $"target pid {process.Id} stopped, exit {process.ExitCode}");
        return process.ExitCode;
    }

    public void SendSignal(int signal) => Signal(_process?.Id ?? throw new InvalidOperationException("not started"), signal);

    /// <summary>Waits for the process to exit by itself; kills it and fails the test after the timeout.</summary>
    public async Task<int> WaitForExitAsync(TimeSpan timeout)
    {
        Process process = _process ?? throw new InvalidOperationException("not started");
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            KillQuietly();
            Assert.Fail($"target did not exit within {timeout.TotalSeconds} s; its log:\n{Log}");
        }
        process.WaitForExit();
        s_live.TryRemove(process.Id, out _);
        return process.ExitCode;
    }

    /// <summary>SIGKILL (kill -9) and wait for the process to be gone.</summary>
    public void Kill()
    {
        Process process = _process ?? throw new InvalidOperationException("not started");
        if (!process.HasExited)
        {
            Signal(process.Id, SigKill);
            process.WaitForExit();
        }
        s_live.TryRemove(process.Id, out _);
        Tool.Log(_output, $"target pid {process.Id} killed");
    }

    /// <summary>Runs a CLI verb of the same build (e.g. "stats", "--admin", ...), with a timeout.</summary>
    public static async Task<ToolResult> RunCliAsync(IEnumerable<string> args, TimeSpan timeout, ITestOutputHelper? output = null)
    {
        (string fileName, List<string> prefix) = TargetExecutable.Command();
        return await Tool.RunPathAsync(fileName, prefix.Concat(args), timeout, output);
    }

    private Process StartTarget(IEnumerable<string> args, bool redirect)
    {
        (string fileName, List<string> prefix) = TargetExecutable.Command();
        var info = new ProcessStartInfo(fileName)
        {
            RedirectStandardOutput = redirect,
            RedirectStandardError = redirect,
            UseShellExecute = false,
        };
        foreach (string arg in prefix.Concat(args))
            info.ArgumentList.Add(arg);
        Tool.Log(_output, $"$ {fileName} {string.Join(' ', info.ArgumentList)}");
        return Process.Start(info) ?? throw new InvalidOperationException("could not start target");
    }

    private void OnLine(string? line)
    {
        if (line is null)
            return;
        _log.Enqueue(line);
        if (line.Contains("listening ", StringComparison.Ordinal) && ListeningPattern().IsMatch(line))
            _listening.TrySetResult(line);
    }

    private void KillQuietly()
    {
        try
        {
            if (_process is { HasExited: false })
            {
                _process.Kill();
                _process.WaitForExit();
            }
        }
        catch (InvalidOperationException)
        {
        }
        if (_process is not null)
            s_live.TryRemove(_process.Id, out _);
    }

    public async ValueTask DisposeAsync()
    {
        KillQuietly();
        if (_process is not null)
        {
            Tool.Log(_output, "--- target log (last 60 lines) ---\n" + string.Join('\n', _log.TakeLast(60)));
            _process.Dispose();
        }
        if (_ownsPool)
            DeleteDirectory(PoolDirectory);
        await Task.CompletedTask;
    }

    public static string NewTempDirectory(string prefix)
    {
        string root = Environment.GetEnvironmentVariable("TARGET_TEST_TMP") ?? "/tmp";
        string path = Path.Combine(root, prefix + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(path);
        return path;
    }

    public static void DeleteDirectory(string path)
    {
        try
        {
            if (Directory.Exists(path))
                Directory.Delete(path, recursive: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Best effort: a mount that failed to unmount keeps its directory.
        }
    }

    private static TaskCompletionSource<string> NewListening() => new(TaskCreationOptions.RunContinuationsAsynchronously);

    private static void Signal(int pid, int signal)
    {
        if (Kill(pid, signal) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            const int NoSuchProcess = 3;
            if (errno != NoSuchProcess)
                throw new InvalidOperationException($"kill({pid}, {signal}) failed: errno {errno}");
        }
    }

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);
}

/// <summary>
/// Finds the built controller: $TARGET_EXE (a target.dll or an executable), else the target.dll that the
/// test project's reference to Target copies next to the tests (so `dotnet test` works without `make build`),
/// else the Target project's own output, else the repo's bin/target from `make build`.
/// </summary>
public static class TargetExecutable
{
    private static readonly Lazy<(string FileName, List<string> Prefix)> s_command = new(Resolve);

    public static (string FileName, List<string> Prefix) Command() => (s_command.Value.FileName, [.. s_command.Value.Prefix]);

    private static (string, List<string>) Resolve()
    {
        string? explicitPath = Environment.GetEnvironmentVariable("TARGET_EXE");
        if (!string.IsNullOrEmpty(explicitPath))
            return ForPath(explicitPath);

        string testDirectory = AppContext.BaseDirectory;
        if (IsRunnableDll(Path.Combine(testDirectory, "target.dll")))
            return ForPath(Path.Combine(testDirectory, "target.dll"));

        // Artifacts layout: .../bin/Target.Tests/<config>/ -> .../bin/Target/<config>/;
        // classic layout: Target.Tests/bin/<Config>/<tfm>/ -> Target/bin/<Config>/<tfm>/.
        string normalized = testDirectory.TrimEnd(Path.DirectorySeparatorChar);
        foreach (string candidate in new[]
        {
            normalized.Replace($"{Path.DirectorySeparatorChar}Target.Tests{Path.DirectorySeparatorChar}", $"{Path.DirectorySeparatorChar}Target{Path.DirectorySeparatorChar}", StringComparison.Ordinal),
        })
        {
            string dll = Path.Combine(candidate, "target.dll");
            if (IsRunnableDll(dll))
                return ForPath(dll);
        }

        for (DirectoryInfo? directory = new(testDirectory); directory is not null; directory = directory.Parent)
        {
            string binTarget = Path.Combine(directory.FullName, "bin", "target");
            if (File.Exists(binTarget) && File.Exists(Path.Combine(directory.FullName, "Target.sln")))
                return ForPath(binTarget);
        }

        throw new InvalidOperationException($"cannot find the target executable near {testDirectory}: build the solution (make build) or set TARGET_EXE");
    }

    private static bool IsRunnableDll(string dll) =>
        File.Exists(dll) && File.Exists(Path.ChangeExtension(dll, ".runtimeconfig.json"));

    private static (string, List<string>) ForPath(string path)
    {
        if (path.EndsWith(".dll", StringComparison.OrdinalIgnoreCase))
            return (DotnetHost(), ["exec", path]);
        return (path, []);
    }

    private static string DotnetHost()
    {
        string? host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
        if (!string.IsNullOrEmpty(host) && File.Exists(host))
            return host;
        string? processPath = Environment.ProcessPath;
        if (processPath is not null && Path.GetFileName(processPath) == "dotnet")
            return processPath;
        return Tool.Find("dotnet") ?? "dotnet";
    }
}
