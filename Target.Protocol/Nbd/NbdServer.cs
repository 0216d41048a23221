// The NBD listener: accepts on any number of TCP and Unix-domain endpoints and runs one
// NbdConnection per client. A failing connection never affects the others or the listener.
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;

namespace Target.Protocol.Nbd;

public sealed class NbdServer : IAsyncDisposable
{
    private readonly INbdExportCatalog _catalog;
    private readonly NbdServerOptions _options;
    private readonly ILogger<NbdServer> _logger;
    private readonly object _lock = new();
    private readonly List<Listener> _listeners = new();
    private readonly ServerConnections<NbdConnection> _connections;
    private readonly CancellationTokenSource _stopping = new();
    private int _running;
    private int _disposed;

    private sealed record Listener(Socket Socket, EndPoint EndPoint, string? UnixPath);

    public NbdServer(INbdExportCatalog catalog, NbdServerOptions options, ILogger<NbdServer> logger)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(logger);
        _catalog = catalog;
        _options = options;
        _logger = logger;
        _connections = new ServerConnections<NbdConnection>("nbd", logger, _stopping.Token);
    }

    /// <summary>Endpoints actually bound (port 0 resolved to the real port), in the order they were added.</summary>
    public IReadOnlyList<EndPoint> BoundEndPoints
    {
        get
        {
            lock (_lock)
            {
                var endPoints = new EndPoint[_listeners.Count];
                for (int i = 0; i < endPoints.Length; i++) endPoints[i] = _listeners[i].EndPoint;
                return endPoints;
            }
        }
    }

    /// <summary>Connections currently open (handshaking or transmitting).</summary>
    public int ConnectionCount => _connections.Count;

    /// <summary>Binds and listens now (so the bound port is known at once); accepting starts in RunAsync.</summary>
    public void ListenTcp(IPEndPoint endPoint)
    {
        ArgumentNullException.ThrowIfNull(endPoint);
        var socket = new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            socket.Bind(endPoint);
            socket.Listen(512);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
        AddListener(new Listener(socket, socket.LocalEndPoint!, null));
        _logger.LogInformation("nbd: listening on tcp {EndPoint}", socket.LocalEndPoint);
    }

    /// <summary>Binds a Unix-domain socket at <paramref name="path"/>, replacing a stale socket file there.</summary>
    public void ListenUnix(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (File.Exists(path)) File.Delete(path);
        var endPoint = new UnixDomainSocketEndPoint(path);
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            socket.Bind(endPoint);
            socket.Listen(512);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
        AddListener(new Listener(socket, endPoint, path));
        _logger.LogInformation("nbd: listening on unix socket {Path}", path);
    }

    private void AddListener(Listener listener)
    {
        lock (_lock)
        {
            if (_disposed != 0 || Volatile.Read(ref _running) != 0)
            {
                listener.Socket.Dispose();
                throw new InvalidOperationException("listeners must be added before RunAsync and before disposal");
            }
            _listeners.Add(listener);
        }
    }

    /// <summary>Accepts and serves clients until <paramref name="ct"/> is cancelled or the server is disposed; then closes every connection.</summary>
    public async Task RunAsync(CancellationToken ct)
    {
        if (Interlocked.Exchange(ref _running, 1) != 0) throw new InvalidOperationException("RunAsync was already called");
        Listener[] listeners;
        lock (_lock) listeners = _listeners.ToArray();
        if (listeners.Length == 0) throw new InvalidOperationException("no endpoint: call ListenTcp or ListenUnix first");

        using CancellationTokenRegistration registration = ct.Register(static state => ((NbdServer)state!).Stop(), this);
        var acceptLoops = new Task[listeners.Length];
        for (int i = 0; i < listeners.Length; i++)
        {
            Listener listener = listeners[i];
            acceptLoops[i] = _connections.AcceptLoopAsync(listener.Socket, listener.EndPoint, client => StartConnection(client, listener));
        }
        await Task.WhenAll(acceptLoops).ConfigureAwait(false);

        // Stopping: close every client and wait for its connection to finish.
        await _connections.AbortAllAsync().ConfigureAwait(false);
        CleanupListeners();
    }

    private void StartConnection(Socket client, Listener listener)
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

    private void Stop()
    {
        if (_stopping.IsCancellationRequested) return;
        try
        {
            _stopping.Cancel();
        }
        catch (ObjectDisposedException)
        {
            return;
        }
        lock (_lock)
        {
            foreach (Listener listener in _listeners) listener.Socket.Dispose();
        }
    }

    private void CleanupListeners()
    {
        lock (_lock)
        {
            foreach (Listener listener in _listeners)
            {
                listener.Socket.Dispose();
                if (listener.UnixPath is not null)
                {
                    try
                    {
                        File.Delete(listener.UnixPath);
                    }
                    catch (IOException ex)
                    {
                        _logger.LogWarning("nbd: could not remove unix socket {Path}: {Error}", listener.UnixPath, ex.Message);
                    }
                }
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        Stop();
        await _connections.AbortAllAsync().ConfigureAwait(false);
        CleanupListeners();
    }
}
