using System.Runtime.InteropServices;

namespace Target.Hosting;

/// <summary>
/// SIGTERM / SIGINT: the first asks for a clean shutdown (the token fires), the second exits at once.
/// </summary>
public sealed class ShutdownSignals : IDisposable
{
    /// <summary>Exit code after a second signal: 128 + SIGINT, as shells report it.</summary>
    public const int ImmediateExitCode = 130;

    private readonly CancellationTokenSource _cts = new();
    private readonly ILogger _logger;
    private readonly PosixSignalRegistration _term;
    private readonly PosixSignalRegistration _int;
    private int _signals;

    public ShutdownSignals(ILogger logger)
    {
        _logger = logger;
        _term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Handle);
        _int = PosixSignalRegistration.Create(PosixSignal.SIGINT, Handle);
    }

    public CancellationToken Token => _cts.Token;

    public string? Reason { get; private set; }

    private void Handle(PosixSignalContext context)
    {
        context.Cancel = true;
        if (Interlocked.Increment(ref _signals) == 1)
        {
            Reason = context.Signal.ToString();
            _logger.LogInformation("{Signal}: shutting down cleanly (send it again to exit at once)", context.Signal);
            // Cancel callbacks run synchronously; keep them off the signal thread.
            ThreadPool.UnsafeQueueUserWorkItem(static cts => cts.Cancel(), _cts, preferLocal: false);
            return;
        }

        // The console logger writes from a queue that would not drain before exit: write directly.
        Console.Error.WriteLine($"{context.Signal} again: exiting now without a clean shutdown");
        Environment.Exit(ImmediateExitCode);
    }

    public void Dispose()
    {
        _term.Dispose();
        _int.Dispose();
        _cts.Dispose();
    }
}
