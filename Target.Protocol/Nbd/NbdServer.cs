// The NBD listener: accepts on any number of TCP and Unix-domain endpoints and runs one
// NbdConnection per client. A failing connection never affects the others or the listener.
using System.Collections.Concurrent;
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
    private readonly ConcurrentDictionary<NbdConnection, Task> _connections = new();
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
        for (int i = 0; i < listeners.Length; i++) acceptLoops[i] = AcceptLoopAsync(listeners[i]);
        await Task.WhenAll(acceptLoops).ConfigureAwait(false);

        // Stopping: close every client and wait for its connection to finish.
        foreach (NbdConnection connection in _connections.Keys) connection.Abort();
        await Task.WhenAll(_connections.Values).ConfigureAwait(false);
        CleanupListeners();
    }

    private async Task AcceptLoopAsync(Listener listener)
    {
        CancellationToken stopping = _stopping.Token;
        while (!stopping.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await listener.Socket.AcceptAsync(stopping).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            catch (ObjectDisposedException)
            {
                return;
            }
            catch (SocketException ex)
            {
                if (stopping.IsCancellationRequested) return;
                // Transient accept failures (EMFILE, ECONNABORTED): log, pause briefly, keep listening.
                _logger.LogWarning("nbd: accept on {EndPoint} failed: {Error}", listener.EndPoint, ex.SocketErrorCode);
                try
                {
                    await Task.Delay(50, stopping).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
                continue;
            }
            StartConnection(client, listener);
        }
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
        var connection = new NbdConnection(client, peer, _catalog, _options, _logger, _stopping.Token);
        // Registered before it runs so that shutdown always finds it.
        var start = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Task run = RunConnectionAsync(connection, start.Task);
        _connections[connection] = run;
        start.SetResult();
        if (_stopping.IsCancellationRequested) connection.Abort();
    }

    private async Task RunConnectionAsync(NbdConnection connection, Task start)
    {
        await start.ConfigureAwait(false);
        try
        {
            await connection.RunAsync().ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            _logger.LogError(ex, "nbd {Peer}: connection failed", connection.Peer);
        }
        finally
        {
            _connections.TryRemove(connection, out _);
            _logger.LogDebug("nbd {Peer}: connection closed", connection.Peer);
        }
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
        foreach (NbdConnection connection in _connections.Keys) connection.Abort();
        await Task.WhenAll(_connections.Values).ConfigureAwait(false);
        CleanupListeners();
    }
}
