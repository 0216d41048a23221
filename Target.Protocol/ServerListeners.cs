// What the NBD and iSCSI servers share before and around the accept loop (ServerConnections):
// binding TCP and Unix-domain listeners, the list of them, closing them on stop, and removing Unix
// socket files at the end. Invariants: listeners are added only before the server runs and before
// it is disposed (Seal); a socket that failed to bind is disposed, never leaked; a Unix socket file
// is removed only by the server that created it.
using System.Net;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using Microsoft.Extensions.Logging;

namespace Target.Protocol;

/// <summary>A bound, listening socket; <see cref="UnixPath"/> is set for Unix-domain sockets.</summary>
internal sealed record ServerListener(Socket Socket, EndPoint EndPoint, string? UnixPath);

internal sealed class ServerListeners(string protocol, ILogger logger)
{
    /// <summary>listen(2) backlog: connection bursts (multipath logins, nbdcopy's connections) wait here.</summary>
    private const int ListenBacklog = 512;

    private readonly object _lock = new();
    private readonly List<ServerListener> _listeners = new();
    private bool _sealed;

    /// <summary>Endpoints actually bound (port 0 resolved to the real port), in the order they were added.</summary>
    public EndPoint[] BoundEndPoints
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

    /// <summary>Binds and listens on TCP now, so the bound port is known at once.</summary>
    public ServerListener ListenTcp(IPEndPoint endPoint)
    {
        ArgumentNullException.ThrowIfNull(endPoint);
        var socket = new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            socket.Bind(endPoint);
            socket.Listen(ListenBacklog);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
        ServerListener listener = Add(new ServerListener(socket, socket.LocalEndPoint!, null));
        logger.LogInformation("{Protocol}: listening on tcp {EndPoint}", protocol, socket.LocalEndPoint);
        return listener;
    }

    /// <summary>Binds a Unix-domain socket at <paramref name="path"/>, replacing a stale socket file there.</summary>
    public ServerListener ListenUnix(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (File.Exists(path)) File.Delete(path);
        var endPoint = new UnixDomainSocketEndPoint(path);
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            socket.Bind(endPoint);
            socket.Listen(ListenBacklog);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
        ServerListener listener = Add(new ServerListener(socket, endPoint, path));
        logger.LogInformation("{Protocol}: listening on unix socket {Path}", protocol, path);
        return listener;
    }

    private ServerListener Add(ServerListener listener)
    {
        lock (_lock)
        {
            if (_sealed)
            {
                listener.Socket.Dispose();
                throw new InvalidOperationException("listeners must be added before RunAsync and before disposal");
            }
            _listeners.Add(listener);
        }
        return listener;
    }

    /// <summary>No listener may be added from now on (the server runs, or is disposed); returns those there are.</summary>
    public ServerListener[] Seal()
    {
        lock (_lock)
        {
            _sealed = true;
            return _listeners.ToArray();
        }
    }

    /// <summary>Stops the server once: cancels its token, then closes the listening sockets (the accept loops end).</summary>
    public void Stop(CancellationTokenSource stopping)
    {
        if (stopping.IsCancellationRequested) return;
        try
        {
            stopping.Cancel();
        }
        catch (ObjectDisposedException)
        {
            return;
        }
        Close();
    }

    /// <summary>Closes the listening sockets: the accept loops end. Unix socket files stay until <see cref="Cleanup"/>.</summary>
    private void Close()
    {
        lock (_lock)
        {
            foreach (ServerListener listener in _listeners) listener.Socket.Dispose();
        }
    }

    /// <summary>Closes the listening sockets and removes the Unix socket files this server created.</summary>
    public void Cleanup()
    {
        lock (_lock)
        {
            foreach (ServerListener listener in _listeners)
            {
                listener.Socket.Dispose();
                if (listener.UnixPath is null) continue;
                try
                {
                    File.Delete(listener.UnixPath);
                }
                catch (IOException ex)
                {
                    logger.LogWarning("{Protocol}: could not remove unix socket {Path}: {Error}", protocol, listener.UnixPath, ex.Message);
                }
            }
        }
    }
}
