// The iSCSI listener: accepts on TCP endpoints (ServerListeners) and runs one IscsiConnection per client, keeps
// the session table (TSIH allocation, session reinstatement) and one logical unit per target.
// A failing connection never affects the others or the listener.
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Target.Protocol.Scsi;

namespace Target.Protocol.Iscsi;

public sealed class IscsiServer : IAsyncDisposable
{
    /// <summary>How long a new login waits for the session it reinstates to close.</summary>
    private static readonly TimeSpan s_reinstatementWait = TimeSpan.FromSeconds(10);

    private readonly IIscsiTargetCatalog _catalog;
    private readonly IscsiServerOptions _options;
    private readonly ILogger _logger;
    private readonly object _lock = new();
    private readonly ServerListeners _listeners;
    private readonly ServerConnections<IscsiConnection> _connections;
    private readonly Dictionary<ushort, IscsiConnection> _sessions = new();
    private readonly Dictionary<string, ScsiLogicalUnit> _units = new(StringComparer.OrdinalIgnoreCase);
    private readonly CancellationTokenSource _stopping = new();
    private ushort _nextTsih;
    private int _running;
    private int _disposed;

    public IscsiServer(IIscsiTargetCatalog catalog, IscsiServerOptions options, ILogger logger)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(logger);
        _catalog = catalog;
        _options = options;
        _logger = logger;
        _listeners = new ServerListeners("iscsi", logger);
        _connections = new ServerConnections<IscsiConnection>("iscsi", logger, _stopping.Token);
        _nextTsih = (ushort)Random.Shared.Next(1, 0x8000);
    }

    internal IIscsiTargetCatalog Catalog => _catalog;

    internal IscsiServerOptions Options => _options;

    internal ILogger Logger => _logger;

    /// <summary>Endpoints actually bound (port 0 resolved to the real port).</summary>
    public IReadOnlyList<IPEndPoint> BoundEndPoints => Array.ConvertAll(_listeners.BoundEndPoints, endPoint => (IPEndPoint)endPoint);

    public int ConnectionCount => _connections.Count;

    public int SessionCount
    {
        get
        {
            lock (_lock) return _sessions.Count;
        }
    }

    /// <summary>Binds and listens now (so the bound port is known at once); accepting starts in RunAsync.</summary>
    public void ListenTcp(IPEndPoint endPoint) => _listeners.ListenTcp(endPoint);

    /// <summary>Accepts and serves initiators until <paramref name="ct"/> is cancelled; then closes every connection.</summary>
    public async Task RunAsync(CancellationToken ct)
    {
        if (Interlocked.Exchange(ref _running, 1) != 0) throw new InvalidOperationException("RunAsync was already called");
        ServerListener[] listeners = _listeners.Seal();
        if (listeners.Length == 0) throw new InvalidOperationException("no endpoint: call ListenTcp first");

        using CancellationTokenRegistration registration = ct.Register(static state => ((IscsiServer)state!).Stop(), this);
        await _connections.ServeAsync(listeners, StartConnection).ConfigureAwait(false);
        _listeners.Cleanup();
    }

    /// <summary>A new initiator connection (every listener is TCP: nothing about it matters here).</summary>
    private void StartConnection(Socket client, ServerListener _)
    {
        string peer;
        try
        {
            client.NoDelay = true;
            peer = client.RemoteEndPoint?.ToString() ?? "?";
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            client.Dispose();
            return;
        }
        _logger.LogDebug("iscsi: connection from {Peer}", peer);
        _connections.Start(new IscsiConnection(client, peer, this, _stopping.Token));
    }

    // ---- sessions ----

    internal bool SessionExists(ushort tsih)
    {
        lock (_lock) return _sessions.ContainsKey(tsih);
    }

    /// <summary>
    /// Registers a new session for a connection whose login completed and returns its TSIH. An
    /// existing session of the same initiator port (InitiatorName + ISID) to the same target is
    /// reinstated: its connection is closed first (RFC 7143 6.3.5).
    /// </summary>
    internal async Task<ushort> RegisterSessionAsync(IscsiConnection connection, string initiatorName, ulong isid, string? targetName)
    {
        List<IscsiConnection> old = new();
        lock (_lock)
        {
            foreach (IscsiConnection existing in _sessions.Values)
            {
                if (existing.Isid == isid && string.Equals(existing.InitiatorName, initiatorName, StringComparison.OrdinalIgnoreCase)
                    && string.Equals(existing.TargetName, targetName, StringComparison.OrdinalIgnoreCase))
                    old.Add(existing);
            }
        }
        foreach (IscsiConnection existing in old)
        {
            _logger.LogInformation("iscsi {Peer}: reinstating session {Tsih} of {Initiator} (closing {OldPeer})",
                connection.Peer, existing.Tsih, initiatorName, existing.Peer);
            existing.Abort();
            if (_connections.TryGetRun(existing, out Task? run) && run != null)
            {
                try
                {
                    await run.WaitAsync(s_reinstatementWait).ConfigureAwait(false);
                }
                catch (TimeoutException)
                {
                    _logger.LogWarning("iscsi {Peer}: the reinstated session {Tsih} did not close within {Seconds} s", connection.Peer, existing.Tsih, s_reinstatementWait.TotalSeconds);
                }
            }
        }
        lock (_lock)
        {
            foreach (IscsiConnection existing in old)
                if (_sessions.TryGetValue(existing.Tsih, out IscsiConnection? still) && ReferenceEquals(still, existing))
                    _sessions.Remove(existing.Tsih);
            while (true)
            {
                ushort tsih = _nextTsih++;
                if (_nextTsih == 0) _nextTsih = 1;
                if (tsih != 0 && !_sessions.ContainsKey(tsih))
                {
                    _sessions[tsih] = connection;
                    return tsih;
                }
            }
        }
    }

    internal void UnregisterSession(IscsiConnection connection)
    {
        lock (_lock)
        {
            if (_sessions.TryGetValue(connection.Tsih, out IscsiConnection? registered) && ReferenceEquals(registered, connection))
                _sessions.Remove(connection.Tsih);
        }
    }

    /// <summary>The logical unit of a target, shared by all its sessions (a new one if the volume behind the name changed).</summary>
    internal ScsiLogicalUnit GetUnit(IscsiTarget target)
    {
        lock (_lock)
        {
            if (_units.TryGetValue(target.Name, out ScsiLogicalUnit? unit) && ReferenceEquals(unit.Volume, target.Volume) && unit.ReadOnly == target.ReadOnly)
                return unit;
            unit = new ScsiLogicalUnit(target.Volume, target.Name, target.ReadOnly, _logger, _options.StateDirectory);
            _units[target.Name] = unit;
            return unit;
        }
    }

    /// <summary>All connections of sessions logged in to <paramref name="unit"/> (task management across sessions).</summary>
    internal List<IscsiConnection> ConnectionsOf(ScsiLogicalUnit unit)
    {
        var result = new List<IscsiConnection>();
        lock (_lock)
        {
            foreach (IscsiConnection connection in _sessions.Values)
                if (ReferenceEquals(connection.Unit, unit)) result.Add(connection);
        }
        return result;
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
