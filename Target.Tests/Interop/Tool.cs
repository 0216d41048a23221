using System.Diagnostics;
using System.Text;
using Xunit.Abstractions;

namespace Target.Tests.Interop;

public sealed record ToolResult(string CommandLine, int ExitCode, string Stdout, string Stderr)
{
    public ToolResult AssertSuccess()
    {
        if (ExitCode != 0)
            Assert.Fail($"`{CommandLine}` exited {ExitCode}\n--- stdout\n{Stdout}\n--- stderr\n{Stderr}");
        return this;
    }
}

/// <summary>
/// Runs the external clients the interop tests drive (nbdinfo, nbdcopy, qemu-img, qemu-io, fio, nbdfuse,
/// mkfs.ext4, mount, fsck.ext4, ...), always with a timeout. A missing tool FAILS the test with the
/// command that installs it; it never skips.
/// </summary>
public static class Tool
{
    private static readonly Dictionary<string, string> s_packages = new(StringComparer.Ordinal)
    {
        ["nbdinfo"] = "libnbd-bin",
        ["nbdcopy"] = "libnbd-bin",
        ["nbdfuse"] = "libnbd-bin",  // Debian 12; its own package "nbdfuse" on later releases
        ["nbdkit"] = "nbdkit",
        ["qemu-img"] = "qemu-utils",
        ["qemu-io"] = "qemu-utils",
        ["qemu-nbd"] = "qemu-utils",
        ["fio"] = "fio",
        ["mkfs.ext4"] = "e2fsprogs",
        ["fsck.ext4"] = "e2fsprogs",
        ["mount"] = "mount",
        ["umount"] = "mount",
        ["fusermount3"] = "fuse3",
        ["xxhsum"] = "xxhash",
        ["iscsi-ls"] = "libiscsi-bin",
        ["iscsi-inq"] = "libiscsi-bin",
        ["iscsi-perf"] = "libiscsi-bin",
        ["tgtd"] = "tgt",
    };

    private static readonly string[] s_extraDirectories = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];

    public static string InstallHint(string name) =>
        s_packages.TryGetValue(name, out string? package)
            ? $"`apt-get install -y {package}` (or run tools/install-deps.sh)"
            : "tools/install-deps.sh";

    /// <summary>The full path of a tool, or a failed test naming the package to install.</summary>
    public static string Require(string name)
    {
        string? path = Find(name);
        if (path is null)
            Assert.Fail($"{name} is not installed; install it with {InstallHint(name)}");
        return path;
    }

    public static string? Find(string name)
    {
        string[] directories = (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries);
        foreach (string directory in directories.Concat(s_extraDirectories))
        {
            string candidate = Path.Combine(directory, name);
            if (File.Exists(candidate))
                return candidate;
        }
        return null;
    }

    public static Task<ToolResult> RunAsync(string name, IEnumerable<string> args, TimeSpan timeout, ITestOutputHelper? output = null, string? workingDirectory = null) =>
        RunPathAsync(Require(name), args, timeout, output, workingDirectory);

    public static async Task<ToolResult> RunCheckedAsync(string name, IEnumerable<string> args, TimeSpan timeout, ITestOutputHelper? output = null, string? workingDirectory = null) =>
        (await RunAsync(name, args, timeout, output, workingDirectory)).AssertSuccess();

    public static async Task<ToolResult> RunPathAsync(string path, IEnumerable<string> args, TimeSpan timeout, ITestOutputHelper? output = null, string? workingDirectory = null)
    {
        var info = new ProcessStartInfo(path)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory ?? Environment.CurrentDirectory,
        };
        foreach (string arg in args)
            info.ArgumentList.Add(arg);
        string commandLine = Path.GetFileName(path) + " " + string.Join(' ', info.ArgumentList.Select(Quote));
        Log(output, $"$ {commandLine}");

        using var process = new Process { StartInfo = info };
        var stdout = new StringBuilder();
        var stderr = new StringBuilder();
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (stdout) stdout.AppendLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (stderr) stderr.AppendLine(e.Data); };
        process.Start();
        process.StandardInput.Close();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();

        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            try
            {
                process.Kill(entireProcessTree: true);
            }
            catch (InvalidOperationException)
            {
            }
            await process.WaitForExitAsync();
            Assert.Fail($"`{commandLine}` did not finish within {timeout.TotalSeconds} s\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
        }
        process.WaitForExit(); // drains the asynchronous readers

        var result = new ToolResult(commandLine, process.ExitCode, stdout.ToString(), stderr.ToString());
        if (result.ExitCode != 0 || output is not null)
            Log(output, $"  exit {result.ExitCode}" + (result.Stderr.Length > 0 ? $"\n  stderr: {Tail(result.Stderr, 2000)}" : ""));
        return result;
    }

    /// <summary>Starts a long-running tool (nbdfuse); dispose kills it.</summary>
    public static BackgroundTool Start(string name, IEnumerable<string> args, ITestOutputHelper? output = null)
    {
        string path = Require(name);
        var info = new ProcessStartInfo(path)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string arg in args)
            info.ArgumentList.Add(arg);
        Log(output, $"$ {name} {string.Join(' ', info.ArgumentList.Select(Quote))} &");
        var process = Process.Start(info)!;
        return new BackgroundTool(name, process);
    }

    internal static void Log(ITestOutputHelper? output, string line)
    {
        if (output is null)
            return;
        try
        {
            output.WriteLine(line);
        }
        catch (InvalidOperationException)
        {
            // The test has finished; its output helper no longer accepts lines.
        }
    }

    internal static string Tail(string text, int chars) => text.Length <= chars ? text : "..." + text[^chars..];

    private static string Quote(string arg) =>
        arg.Length > 0 && arg.All(c => char.IsAsciiLetterOrDigit(c) || "-_./:=,@%+".Contains(c)) ? arg : $"'{arg.Replace("'", "'\\''")}'";
}

public sealed class BackgroundTool(string name, Process process) : IAsyncDisposable
{
    private readonly Task<string> _stderr = process.StandardError.ReadToEndAsync();
    private readonly Task<string> _stdout = process.StandardOutput.ReadToEndAsync();

    public Process Process => process;

    public bool HasExited => process.HasExited;

    public async Task<string> OutputAsync() => await _stdout + await _stderr;

    /// <summary>Waits for the tool to exit by itself (e.g. nbdfuse after fusermount -u).</summary>
    public async Task<bool> WaitForExitAsync(TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await process.WaitForExitAsync(cts.Token);
            return true;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (!process.HasExited)
        {
            try
            {
                process.Kill(entireProcessTree: true);
            }
            catch (InvalidOperationException)
            {
            }
        }
        await process.WaitForExitAsync();
        process.Dispose();
        _ = name;
    }
}
