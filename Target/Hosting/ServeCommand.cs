using System.Diagnostics;
using System.Net;
using Target.Admin;
using Target.Cli;
using Target.Config;
using Target.Dedup;
using Target.Protocol.Iscsi;
using Target.Protocol.Nbd;

namespace Target.Hosting;

/// <summary>
/// <c>target serve</c>: opens the pool, creates the named volumes, starts NBD, iSCSI (--iscsi) and the admin API,
/// prints one machine-readable line <c>listening nbd=HOST:PORT [iscsi=HOST:PORT] admin=HOST:PORT</c>, and on SIGTERM/SIGINT
/// stops the listeners and closes the pool (destage + checkpoint).
/// </summary>
public static class ServeCommand
{
    /// <summary>Logger category of the controller's own lines.</summary>
    public const string LogCategory = "target";

    /// <summary>How long the NBD server gets to finish after cancellation before the pool is closed anyway.</summary>
    private static readonly TimeSpan s_nbdStopTimeout = TimeSpan.FromSeconds(10);

    public static async Task<int> RunAsync(ServeSettings settings)
    {
        using ILoggerFactory loggerFactory = Logging.Create(settings.LogLevel, allToStandardError: false);
        ILogger log = loggerFactory.CreateLogger(LogCategory);
        using var signals = new ShutdownSignals(log);
        try
        {
            return await RunAsync(settings, loggerFactory, log, signals).ConfigureAwait(false);
        }
        catch (Exception e) when (e is StorageException or IOException or InvalidDataException or UnauthorizedAccessException
                                   or System.Net.Sockets.SocketException)
        {
            // Expected failures (pool locked, missing, corrupt; address in use): the message says it all.
            log.LogCritical("serve failed: {Error}", e.Message);
            return 1;
        }
        catch (Exception e)
        {
            log.LogCritical(e, "serve failed: {Error}", e.Message);
            return 1;
        }
    }

    private static async Task<int> RunAsync(ServeSettings settings, ILoggerFactory loggerFactory, ILogger log, ShutdownSignals signals)
    {
        log.LogInformation(
            "opening pool {Directory} (creates {PoolSize} if missing), write mode {WriteMode}, cache {Cache}, journal flushed at least every {JournalFlushMs} ms{Direct}",
            settings.PoolDirectory, SizeParser.Format(settings.PoolSizeBytes), WriteModes.ToText(settings.WriteMode),
            SizeParser.Format(settings.CacheBytes), settings.JournalFlushMs, settings.NoDirect ? ", no O_DIRECT" : "");

        var openTime = Stopwatch.StartNew();
        Pool pool = Pool.Open(new PoolOptions
        {
            Directory = settings.PoolDirectory,
            CreateSizeBytes = settings.PoolSizeBytes,
            DevicePaths = settings.Device is null ? null : [settings.Device],
            FillWarningPercents = settings.FillWarningPercents,
            NoDirect = settings.NoDirect,
            WriteMode = settings.WriteMode,
            CacheBytes = settings.CacheBytes,
            JournalFlushMs = settings.JournalFlushMs,
            ReadCacheBytes = settings.ReadCacheBytes,
            LoggerFactory = loggerFactory,
        });
        int exitCode = 0;
        NbdServer? nbd = null;
        Task? nbdRun = null;
        IscsiServer? iscsi = null;
        Task? iscsiRun = null;
        AdminServer? admin = null;
        try
        {
            PoolStats opened = pool.GetStats();
            log.LogInformation(
                "pool {Uuid} open in {Ms} ms: {Volumes} volume(s), {Physical} stored, {Free} free, read cache {ReadCache}",
                opened.Uuid, openTime.ElapsedMilliseconds, opened.Volumes.Count, SizeParser.Human(opened.PhysicalBytes), SizeParser.Human(opened.FreeBytes),
                SizeParser.Human(opened.ReadCacheBytes));

            foreach (VolumeSpec spec in settings.Volumes)
            {
                if (pool.TryGetVolume(spec.Name, out Volume existing))
                {
                    if (existing.SizeBytes != spec.SizeBytes)
                        log.LogWarning("volume {Volume} exists with size {Size}; not resized to {Wanted} (use 'target volume resize')",
                            spec.Name, SizeParser.Format(existing.SizeBytes), SizeParser.Format(spec.SizeBytes));
                    continue;
                }
                await pool.CreateVolumeAsync(spec.Name, spec.SizeBytes, spec.LogicalBlockSize, signals.Token).ConfigureAwait(false);
                log.LogInformation("created volume {Volume} ({Size}, {Block}-byte blocks)", spec.Name, SizeParser.Format(spec.SizeBytes), spec.LogicalBlockSize);
            }

            var catalog = new VolumeCatalog(pool);
            var listening = new List<string>();

            if (settings.Nbd is not null || settings.NbdSocket is not null)
            {
                nbd = new NbdServer(catalog, new NbdServerOptions(), loggerFactory.CreateLogger<NbdServer>());
                if (settings.Nbd is not null)
                    nbd.ListenTcp(settings.Nbd);
                if (settings.NbdSocket is not null)
                    nbd.ListenUnix(settings.NbdSocket);
                nbdRun = nbd.RunAsync(signals.Token);
                IPEndPoint? nbdBound = settings.Nbd is null ? null : await BoundTcpAsync(nbd, nbdRun).ConfigureAwait(false);
                if (nbdBound is not null)
                    listening.Add($"nbd={nbdBound}");
                if (settings.NbdSocket is not null)
                    listening.Add($"nbd-socket={settings.NbdSocket}");
            }

            if (settings.Iscsi is not null)
            {
                iscsi = new IscsiServer(new ExportIscsiTargetCatalog(catalog), settings.IscsiOptions.ToServerOptions(settings.PoolDirectory),
                    loggerFactory.CreateLogger<IscsiServer>());
                iscsi.ListenTcp(settings.Iscsi);
                listening.Add($"iscsi={iscsi.BoundEndPoints[0]}");
                iscsiRun = iscsi.RunAsync(signals.Token);
            }

            if (settings.Admin is not null)
            {
                admin = await AdminServer.StartAsync(settings.Admin, pool, catalog, settings, loggerFactory, signals.Token).ConfigureAwait(false);
                listening.Add($"admin={admin.BoundEndPoint}");
            }

            // Tests and scripts parse this line: keep its shape.
            log.LogInformation("listening {Listeners}", string.Join(' ', listening));
            PrintAttachHints(log, pool, settings, listening);

            Task stop = Task.Delay(Timeout.Infinite, signals.Token);
            Task first = nbdRun is null ? stop : await Task.WhenAny(stop, nbdRun).ConfigureAwait(false);
            if (first != stop && !signals.Token.IsCancellationRequested)
            {
                exitCode = 1;
                log.LogError("the NBD server stopped on its own: {Error}", nbdRun!.Exception?.GetBaseException().Message ?? "no error");
            }
        }
        catch (OperationCanceledException) when (signals.Token.IsCancellationRequested)
        {
        }
        finally
        {
            log.LogInformation("stopping listeners");
            if (admin is not null)
                await admin.DisposeAsync().ConfigureAwait(false);
            if (iscsi is not null)
            {
                if (iscsiRun is not null)
                {
                    try
                    {
                        await iscsiRun.WaitAsync(s_nbdStopTimeout).ConfigureAwait(false);
                    }
                    catch (Exception e) when (e is not OperationCanceledException)
                    {
                        log.LogWarning("the iSCSI server did not stop cleanly: {Error}", e.Message);
                    }
                    catch (OperationCanceledException)
                    {
                    }
                }
                await iscsi.DisposeAsync().ConfigureAwait(false);
            }
            if (nbd is not null)
            {
                if (nbdRun is not null)
                    await WaitQuietlyAsync(nbdRun, s_nbdStopTimeout, log).ConfigureAwait(false);
                await nbd.DisposeAsync().ConfigureAwait(false);
            }

            var closeTime = Stopwatch.StartNew();
            log.LogInformation("closing pool (destage + checkpoint)");
            await pool.DisposeAsync().ConfigureAwait(false);
            log.LogInformation("pool closed cleanly in {Ms} ms", closeTime.ElapsedMilliseconds);
        }
        return exitCode;
    }

    /// <summary>The first TCP endpoint the NBD server bound (port 0 becomes the real port).</summary>
    private static async Task<IPEndPoint?> BoundTcpAsync(NbdServer nbd, Task run)
    {
        var wait = Stopwatch.StartNew();
        while (true)
        {
            foreach (EndPoint endPoint in nbd.BoundEndPoints)
                if (endPoint is IPEndPoint ip)
                    return ip;
            if (run.IsCompleted)
                await run.ConfigureAwait(false);
            if (wait.Elapsed > TimeSpan.FromSeconds(10))
                throw new InvalidOperationException("the NBD server did not report its bound address");
            await Task.Delay(10).ConfigureAwait(false);
        }
    }

    private static async Task WaitQuietlyAsync(Task task, TimeSpan timeout, ILogger log)
    {
        try
        {
            await task.WaitAsync(timeout).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            log.LogWarning("the NBD server did not stop within {Seconds} s; closing the pool anyway", timeout.TotalSeconds);
        }
        catch (OperationCanceledException)
        {
        }
        catch (Exception e)
        {
            log.LogWarning("the NBD server stopped with an error: {Error}", e.Message);
        }
    }

    private static void PrintAttachHints(ILogger log, Pool pool, ServeSettings settings, List<string> listening)
    {
        string? nbd = listening.FirstOrDefault(l => l.StartsWith("nbd=", StringComparison.Ordinal))?["nbd=".Length..];
        string? admin = listening.FirstOrDefault(l => l.StartsWith("admin=", StringComparison.Ordinal))?["admin=".Length..];
        string volume = pool.Volumes.Count > 0 ? pool.Volumes[0].Name : settings.Volumes.FirstOrDefault()?.Name ?? "VOLUME";
        if (nbd is not null)
        {
            int colon = nbd.LastIndexOf(':');
            string host = nbd[..colon];
            string port = nbd[(colon + 1)..];
            log.LogInformation("attach with: nbdinfo nbd://{Nbd}/{Volume}", nbd, volume);
            log.LogInformation("attach with: nbd-client {Host} {Port} -N {Volume} /dev/nbd0", host, port, volume);
            log.LogInformation(
                "attach with: fio --name=t --ioengine=nbd --uri=nbd://{Nbd}/{Volume} --rw=randwrite --bs=4k --iodepth=32 --size=1G",
                nbd, volume);
        }
        string? iscsi = listening.FirstOrDefault(l => l.StartsWith("iscsi=", StringComparison.Ordinal))?["iscsi=".Length..];
        if (iscsi is not null)
        {
            log.LogInformation("attach with: iscsi-ls -s iscsi://{Iscsi}   iscsi-inq iscsi://{Iscsi}/{Target}/0", iscsi, iscsi, IscsiNames.ForVolume(volume));
            log.LogInformation("attach with: iscsiadm -m discovery -t st -p {Iscsi} && iscsiadm -m node -T {Target} -p {Iscsi} --login",
                iscsi, IscsiNames.ForVolume(volume), iscsi);
        }
        if (admin is not null)
            log.LogInformation("stats: target stats --admin {Admin}   metrics: http://{Admin}/metrics", admin, admin);
    }
}
