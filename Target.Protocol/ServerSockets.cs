// Socket helpers both connection types (NBD, iSCSI) use: send everything or give up cleanly,
// shut a socket down, and log why a connection's run ended. None of them throws.
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using Microsoft.Extensions.Logging;

namespace Target.Protocol;

internal static class ServerSockets
{
    /// <summary>
    /// Sends every byte. False when the peer is gone or the server stops: the failure is logged
    /// (debug: a vanished peer is normal) and the socket shut down, so the receive loop ends too.
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public static async ValueTask<bool> TrySendAllAsync(Socket socket, ReadOnlyMemory<byte> bytes, string protocol, string peer, ILogger logger, CancellationToken ct)
    {
        try
        {
            while (!bytes.IsEmpty)
            {
                int sent = await socket.SendAsync(bytes, SocketFlags.None, ct).ConfigureAwait(false);
                bytes = bytes.Slice(sent);
            }
            return true;
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException or OperationCanceledException)
        {
            logger.LogDebug("{Protocol} {Peer}: send failed ({Error}); nothing more is sent", protocol, peer, ex.Message);
            Shutdown(socket);
            return false;
        }
    }

    /// <summary>Shuts both directions down (the loops blocked on the socket end); a socket already gone is fine.</summary>
    public static void Shutdown(Socket socket)
    {
        try
        {
            socket.Shutdown(SocketShutdown.Both);
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            // already gone
        }
    }

    /// <summary>
    /// The one place a connection's run decides how its ending is logged: the server stopping, a
    /// socket error or a closed socket are normal (debug); anything else is a bug worth an error.
    /// </summary>
    public static void LogConnectionEnd(Exception exception, string protocol, string peer, ILogger logger, CancellationToken serverToken)
    {
        switch (exception)
        {
            case OperationCanceledException when serverToken.IsCancellationRequested:
                logger.LogDebug("{Protocol} {Peer}: server stopping, closing", protocol, peer);
                break;
            case SocketException socketError:
                logger.LogDebug("{Protocol} {Peer}: socket error {Error}, closing", protocol, peer, socketError.SocketErrorCode);
                break;
            case ObjectDisposedException:
                logger.LogDebug("{Protocol} {Peer}: socket closed", protocol, peer);
                break;
            default:
                logger.LogError(exception, "{Protocol} {Peer}: unexpected error, closing this connection", protocol, peer);
                break;
        }
    }
}
