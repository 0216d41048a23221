// The NBD listener: accepts on any number of TCP and Unix-domain endpoints (ServerListeners) and
// runs one NbdConnection per client. A failing connection never affects the others or the listener.
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;

namespace Target.Protocol.Nbd;

public sealed class NbdServer : IAsyncDisposable
{
    private readonly INbdExportCatalog _catalog;
    private readonly NbdServerOptions _options;
    private readonly ILogger<NbdServer> _logger;
    private readonly ServerListeners _listeners;
    private readonly ServerConnections<NbdConnection> _connections;
    private readonly CancellationTokenSource _stopping = new();
    private int _running;
    private int _disposed;

    public NbdServer(INbdExportCatalog catalog, NbdServerOptions options, ILogger<NbdServer> logger)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(logger);
        _catalog = catalog;
        _options = options;
        _logger = logger;
        _listeners = new ServerListeners("nbd", logger);
        _connections = new ServerConnections<NbdConnection>("nbd", logger, _stopping.Token);
    }

    /// <summary>Endpoints actually bound (port 0 resolved to the real port), in the order they were added.</summary>
    public IReadOnlyList<EndPoint> BoundEndPoints => _listeners.BoundEndPoints;

    /// <summary>Connections currently open (handshaking or transmitting).</summary>
    public int ConnectionCount => _connections.Count;

    /// <summary>Binds and listens now (so the bound port is known at once); accepting starts in RunAsync.</summary>
    public void ListenTcp(IPEndPoint endPoint) => _listeners.ListenTcp(endPoint);

    /// <summary>Binds a Unix-domain socket at <paramref name="path"/>, replacing a stale socket file there.</summary>
    public void ListenUnix(string path) => _listeners.ListenUnix(path);

    /// <summary>Accepts and serves clients until <paramref name="ct"/> is cancelled or the server is disposed; then closes every connection.</summary>
    public async Task RunAsync(CancellationToken ct)
    {
        if (Interlocked.Exchange(ref _running, 1) != 0) throw new InvalidOperationException("RunAsync was already called");
        ServerListener[] listeners = _listeners.Seal();
        if (listeners.Length == 0) throw new InvalidOperationException("no endpoint: call ListenTcp or ListenUnix first");

        using CancellationTokenRegistration registration = ct.Register(static state => ((NbdServer)state!).Stop(), this);
        await _connections.ServeAsync(listeners, StartConnection).ConfigureAwait(false);
        _listeners.Cleanup();
    }

    private void StartConnection(Socket client, ServerListener listener)
    {
        string peer;
        try
        {
            if (listener.UnixPath is null) client.NoDelay = true;
            peer = client.RemoteEndPoint?.ToString() is { Length: > 0 } remote ? remote : $"unix:{listener.UnixPath}";
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            client.Dispose();
            return;
        }
        _logger.LogDebug("nbd: connection from {Peer}", peer);
        _connections.Start(new NbdConnection(client, peer, _catalog, _options, _logger, _stopping.Token));
    }

    private void Stop() => _listeners.Stop(_stopping);

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _listeners.Seal();
        Stop();
        await _connections.AbortAllAsync().ConfigureAwait(false);
        _listeners.Cleanup();
    }
}
