// What the NBD and iSCSI servers share (with ServerListeners): the accept loop (transient accept failures are logged
// and retried, cancellation ends it) and the set of live connections. Invariants: a connection
// is registered before it runs, so a shutdown that starts meanwhile always finds and aborts it;
// a connection's failure is logged and ends only that connection.
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;

namespace Target.Protocol;

/// <summary>A protocol connection as its server manages it.</summary>
internal interface IServerConnection
{
    string Peer { get; }

    Task RunAsync();

    void Abort();
}

internal sealed class ServerConnections<TConnection>(string protocol, ILogger logger, CancellationToken stopping)
    where TConnection : class, IServerConnection
{
    /// <summary>Pause after a failed accept (EMFILE, ECONNABORTED) before listening again.</summary>
    private const int AcceptRetryDelayMs = 50;

    private readonly ConcurrentDictionary<TConnection, Task> _running = new();

    public int Count => _running.Count;

    public bool TryGetRun(TConnection connection, out Task? run) => _running.TryGetValue(connection, out run);

    /// <summary>Accepts clients until the server stops, handing each to <paramref name="accepted"/>.</summary>
    private async Task AcceptLoopAsync(Socket listener, EndPoint endPoint, Action<Socket> accepted)
    {
        while (!stopping.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await listener.AcceptAsync(stopping).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException)
            {
                return;
            }
            catch (SocketException ex)
            {
                if (stopping.IsCancellationRequested) return;
                logger.LogWarning("{Protocol}: accept on {EndPoint} failed: {Error}", protocol, endPoint, ex.SocketErrorCode);
                try
                {
                    await Task.Delay(AcceptRetryDelayMs, stopping).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
                continue;
            }
            accepted(client);
        }
    }

    /// <summary>Runs an accept loop on each listener until the server stops, then closes every connection and waits for them.</summary>
    public async Task ServeAsync(ServerListener[] listeners, Action<Socket, ServerListener> accepted)
    {
        var loops = new Task[listeners.Length];
        for (int i = 0; i < listeners.Length; i++)
        {
            ServerListener listener = listeners[i];
            loops[i] = AcceptLoopAsync(listener.Socket, listener.EndPoint, client => accepted(client, listener));
        }
        await Task.WhenAll(loops).ConfigureAwait(false);
        await AbortAllAsync().ConfigureAwait(false);
    }

    /// <summary>Registers and runs a new connection.</summary>
    public void Start(TConnection connection)
    {
        var start = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _running[connection] = RunAsync(connection, start.Task);
        start.SetResult();
        if (stopping.IsCancellationRequested) connection.Abort();
    }

    /// <summary>Closes every connection and waits for each to finish.</summary>
    public async Task AbortAllAsync()
    {
        foreach (TConnection connection in _running.Keys) connection.Abort();
        await Task.WhenAll(_running.Values).ConfigureAwait(false);
    }

    private async Task RunAsync(TConnection connection, Task start)
    {
        await start.ConfigureAwait(false);
        try
        {
            await connection.RunAsync().ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            logger.LogError(ex, "{Protocol} {Peer}: connection failed", protocol, connection.Peer);
        }
        finally
        {
            _running.TryRemove(connection, out _);
            logger.LogDebug("{Protocol} {Peer}: connection closed", protocol, connection.Peer);
        }
    }
}
