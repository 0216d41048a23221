// Test harness: an NbdServer on 127.0.0.1:0 over MemoryVolumes, a log collector, and a seeded
// random source that prints its seed (set NBD_TEST_SEED to replay a failure).
using System.Collections.Concurrent;
using System.Net;
using Microsoft.Extensions.Logging;
using Target.Protocol.Nbd;
using Target.Tests.Support;
using Xunit.Abstractions;

namespace Target.Tests.Nbd;

public sealed class CollectingLogger<T> : ILogger<T>
{
    private readonly ITestOutputHelper? _output;

    public CollectingLogger(ITestOutputHelper? output = null) => _output = output;

    public ConcurrentQueue<(LogLevel Level, string Message)> Lines { get; } = new();

    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => true;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        string message = formatter(state, exception) + (exception is null ? "" : $" [{exception.GetType().Name}: {exception.Message}]");
        Lines.Enqueue((logLevel, message));
        try
        {
            _output?.WriteLine($"{logLevel}: {message}");
        }
        catch (InvalidOperationException)
        {
            // the test already finished
        }
    }

    public bool Contains(LogLevel minimumLevel, string fragment)
        => Lines.Any(l => l.Level >= minimumLevel && l.Message.Contains(fragment, StringComparison.OrdinalIgnoreCase));

    /// <summary>Waits (bounded) for a matching line: connections log as they close, slightly after the client sees it.</summary>
    public async Task<bool> WaitForAsync(LogLevel minimumLevel, string fragment)
    {
        DateTime deadline = DateTime.UtcNow + TestNbdClient.Timeout;
        while (DateTime.UtcNow < deadline)
        {
            if (Contains(minimumLevel, fragment)) return true;
            await Task.Delay(10);
        }
        return false;
    }
}

public sealed class NbdTestServer : IAsyncDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _run;

    public NbdTestServer(ITestOutputHelper? output, NbdServerOptions? options = null, string? unixPath = null, params NbdExport[] exports)
    {
        Catalog = new NbdExportCatalog(exports);
        Logger = new CollectingLogger<NbdServer>(output);
        Server = new NbdServer(Catalog, options ?? new NbdServerOptions(), Logger);
        Server.ListenTcp(new IPEndPoint(IPAddress.Loopback, 0));
        if (unixPath is not null) Server.ListenUnix(unixPath);
        _run = Server.RunAsync(_stop.Token);
    }

    /// <summary>One writable 16 MiB export named "disk" plus a read-only one named "ro".</summary>
    public static (NbdTestServer Server, MemoryVolume Disk, MemoryVolume ReadOnlyDisk) StartDefault(ITestOutputHelper? output, NbdServerOptions? options = null)
    {
        var disk = new MemoryVolume("disk", 16 << 20);
        var readOnly = new MemoryVolume("ro", 1 << 20);
        var server = new NbdTestServer(output, options, null,
            new NbdExport("disk", disk, "test disk", ReadOnly: false),
            new NbdExport("ro", readOnly, "read-only disk", ReadOnly: true));
        return (server, disk, readOnly);
    }

    public NbdExportCatalog Catalog { get; }

    public CollectingLogger<NbdServer> Logger { get; }

    public NbdServer Server { get; }

    public IPEndPoint EndPoint => (IPEndPoint)Server.BoundEndPoints[0];

    public Task<TestNbdClient> OpenAsync(string export = "disk", bool structured = true, bool metaContext = true)
        => TestNbdClient.OpenAsync(EndPoint, export, structured, metaContext);

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        Task finished = await Task.WhenAny(_run, Task.Delay(TestNbdClient.Timeout));
        Assert.True(finished == _run, "server did not stop within the timeout");
        await _run;
        await Server.DisposeAsync();
    }
}

/// <summary>Seeded randomness for a test; the seed is printed so a failure can be replayed.</summary>
public static class TestSeed
{
    public static Random Create(ITestOutputHelper output)
    {
        int seed = int.TryParse(Environment.GetEnvironmentVariable("NBD_TEST_SEED"), out int fixedSeed) ? fixedSeed : Random.Shared.Next();
        output.WriteLine($"seed {seed} (replay with NBD_TEST_SEED={seed})");
        return new Random(seed);
    }
}
