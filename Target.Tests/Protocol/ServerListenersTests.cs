// The listener setup NBD and iSCSI share (ServerListeners): binding resolves port 0, a stale Unix
// socket file is replaced and removed at the end, nothing can be added once the server runs or is
// disposed, and both servers refuse a late listener the same way.
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging.Abstractions;
using Target.Protocol;
using Target.Protocol.Iscsi;
using Target.Protocol.Nbd;
using Target.Tests.Interop;
using Target.Tests.Support;

namespace Target.Tests.Protocol;

public sealed class ServerListenersTests
{
    [Fact]
    public void Tcp_and_unix_listeners_bind_accept_and_are_cleaned_up()
    {
        using var temp = new TempDirectory();
        string path = Path.Combine(temp.Path, "test.sock");
        File.WriteAllText(path, "stale");
        var listeners = new ServerListeners("test", NullLogger.Instance);
        ServerListener tcp = listeners.ListenTcp(new IPEndPoint(IPAddress.Loopback, 0));
        ServerListener unix = listeners.ListenUnix(path);

        EndPoint[] bound = listeners.BoundEndPoints;
        Assert.Equal(2, bound.Length);
        Assert.NotEqual(0, ((IPEndPoint)bound[0]).Port);
        Assert.IsType<UnixDomainSocketEndPoint>(bound[1]);
        Assert.Null(tcp.UnixPath);
        Assert.Equal(path, unix.UnixPath);
        using (var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
            client.Connect(new UnixDomainSocketEndPoint(path));   // the stale file was replaced by a live socket
        using (var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
            client.Connect(bound[0]);

        Assert.Equal(2, listeners.Seal().Length);
        Assert.Throws<InvalidOperationException>(() => listeners.ListenTcp(new IPEndPoint(IPAddress.Loopback, 0)));
        Assert.Equal(2, listeners.BoundEndPoints.Length);

        listeners.Cleanup();
        Assert.False(File.Exists(path));
        Assert.Throws<ObjectDisposedException>(() => tcp.Socket.Accept());
    }

    [Fact]
    public void Stop_cancels_once_and_closes_the_listening_sockets()
    {
        var listeners = new ServerListeners("test", NullLogger.Instance);
        ServerListener tcp = listeners.ListenTcp(new IPEndPoint(IPAddress.Loopback, 0));
        using var stopping = new CancellationTokenSource();
        listeners.Stop(stopping);
        Assert.True(stopping.IsCancellationRequested);
        Assert.Throws<ObjectDisposedException>(() => tcp.Socket.Accept());
        listeners.Stop(stopping);   // a second stop is a no-op
    }

    [Fact]
    public async Task Both_servers_refuse_a_listener_after_they_started_or_were_disposed()
    {
        var volume = new MemoryVolume("v", 1 << 20);
        await using var nbd = new NbdServer(new NbdExportCatalog(new NbdExport("v", volume, "", false)), new NbdServerOptions(), NullLogger<NbdServer>.Instance);
        await using var iscsi = new IscsiServer(new IscsiTargetList(new IscsiTarget("iqn.2026-11.io.target:v", volume, false)), new IscsiServerOptions(), NullLogger.Instance);
        nbd.ListenTcp(new IPEndPoint(IPAddress.Loopback, 0));
        iscsi.ListenTcp(new IPEndPoint(IPAddress.Loopback, 0));
        Assert.NotEqual(0, ((IPEndPoint)nbd.BoundEndPoints[0]).Port);
        Assert.NotEqual(0, iscsi.BoundEndPoints[0].Port);

        using var stop = new CancellationTokenSource();
        Task nbdRun = nbd.RunAsync(stop.Token);
        Task iscsiRun = iscsi.RunAsync(stop.Token);
        Assert.Throws<InvalidOperationException>(() => nbd.ListenTcp(new IPEndPoint(IPAddress.Loopback, 0)));
        Assert.Throws<InvalidOperationException>(() => iscsi.ListenTcp(new IPEndPoint(IPAddress.Loopback, 0)));
        stop.Cancel();
        await Task.WhenAll(nbdRun, iscsiRun).WaitAsync(TimeSpan.FromSeconds(10));

        var disposed = new IscsiServer(new IscsiTargetList(new IscsiTarget("iqn.2026-11.io.target:v", volume, false)), new IscsiServerOptions(), NullLogger.Instance);
        await disposed.DisposeAsync();
        Assert.Throws<InvalidOperationException>(() => disposed.ListenTcp(new IPEndPoint(IPAddress.Loopback, 0)));
    }
}
