using System.Diagnostics.CodeAnalysis;
using System.Net;
using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.Hosting;
using Target.Cli;
using Target.Config;
using Target.Dedup;
using Target.Hosting;

namespace Target.Admin;

/// <summary>
/// The admin HTTP API (ASP.NET Core minimal APIs on Kestrel): JSON for the pool, volumes and stats,
/// Prometheus text at /metrics. Binds only where told (loopback by default).
/// </summary>
public sealed class AdminServer : IAsyncDisposable
{
    private readonly WebApplication _app;

    private AdminServer(WebApplication app, IPEndPoint boundEndPoint)
    {
        _app = app;
        BoundEndPoint = boundEndPoint;
    }

    public IPEndPoint BoundEndPoint { get; }

    public static readonly JsonSerializerOptions JsonOptions = new(JsonSerializerDefaults.Web)
    {
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        WriteIndented = true,
    };

    public static async Task<AdminServer> StartAsync(
        IPEndPoint endPoint, Pool pool, VolumeCatalog catalog, ServeSettings settings, ILoggerFactory loggerFactory, CancellationToken ct)
    {
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
        {
            ContentRootPath = AppContext.BaseDirectory,
            EnvironmentName = Environments.Production,
        });
        builder.Logging.ClearProviders();
        builder.Services.AddSingleton(loggerFactory);
        builder.Services.AddSingleton<IHostLifetime, ExternalLifetime>();
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.AddServerHeader = false;
            kestrel.Listen(endPoint);
        });
        builder.Services.ConfigureHttpJsonOptions(json =>
        {
            json.SerializerOptions.NumberHandling = JsonOptions.NumberHandling;
            json.SerializerOptions.WriteIndented = true;
        });

        WebApplication app = builder.Build();
        Map(app, pool, catalog, settings);
        await app.StartAsync(ct).ConfigureAwait(false);

        string address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        var uri = new Uri(address);
        var bound = new IPEndPoint(endPoint.Address, uri.Port);
        return new AdminServer(app, bound);
    }

    private static void Map(WebApplication app, Pool pool, VolumeCatalog catalog, ServeSettings settings)
    {
        app.MapGet("/", () => Results.Text(
            "Target admin API\n  GET /api/pool\n  GET /api/stats\n  GET /api/volumes\n  POST /api/volumes {name, size, logicalBlockSize}\n" +
            "  GET /api/volumes/{name}\n  DELETE /api/volumes/{name}\n  POST /api/volumes/{name}/resize {size}\n  GET /metrics\n"));

        app.MapGet("/api/pool", () => Guard(() =>
        {
            PoolStats stats = pool.GetStats();
            return Results.Ok(new
            {
                stats.Uuid,
                Directory = settings.PoolDirectory,
                stats.Fingerprint,
                WriteMode = WriteModes.ToText(settings.WriteMode),
                stats.CapacityBytes,
                stats.FreeBytes,
                stats.PhysicalBytes,
                stats.LogicalBytes,
                stats.UniqueChunks,
                stats.DedupRatio,
                VolumeCount = stats.Volumes.Count,
            });
        }));

        app.MapGet("/api/stats", () => Guard(() => Results.Ok(pool.GetStats())));

        app.MapGet("/api/volumes", () => Guard(() => Results.Ok(pool.Volumes.Select(v => v.GetStats()).ToList())));

        app.MapGet("/api/volumes/{name}", (string name) => Guard(() =>
            pool.TryGetVolume(name, out Volume volume)
                ? Results.Ok(volume.GetStats())
                : Error(StatusCodes.Status404NotFound, $"no volume '{name}'")));

        app.MapPost("/api/volumes", async (CreateVolumeRequest request, CancellationToken ct) =>
        {
            if (!TryGetSize(request.SizeBytes, request.Size, out long sizeBytes, out string? error))
                return Error(StatusCodes.Status400BadRequest, error);
            if (!VolumeSpec.TryCreate(request.Name, sizeBytes, request.LogicalBlockSize ?? VolumeSpec.DefaultLogicalBlockSize, out VolumeSpec? spec, out error))
                return Error(StatusCodes.Status400BadRequest, error);
            return await GuardAsync(async () =>
            {
                Volume volume = await pool.CreateVolumeAsync(spec.Name, spec.SizeBytes, spec.LogicalBlockSize, ct).ConfigureAwait(false);
                app.Logger.LogInformation("created volume {Volume} ({Size})", spec.Name, SizeParser.Format(spec.SizeBytes));
                return Results.Created($"/api/volumes/{spec.Name}", volume.GetStats());
            }).ConfigureAwait(false);
        });

        app.MapDelete("/api/volumes/{name}", async (string name, CancellationToken ct) => await GuardAsync(async () =>
        {
            await pool.DeleteVolumeAsync(name, ct).ConfigureAwait(false);
            catalog.Forget(name);
            app.Logger.LogInformation("deleted volume {Volume}", name);
            return Results.NoContent();
        }).ConfigureAwait(false));

        app.MapPost("/api/volumes/{name}/resize", async (string name, ResizeVolumeRequest request, CancellationToken ct) =>
        {
            if (!TryGetSize(request.SizeBytes, request.Size, out long sizeBytes, out string? error)
                || !VolumeSpec.TryCheckSize(sizeBytes, out error))
                return Error(StatusCodes.Status400BadRequest, error);
            return await GuardAsync(async () =>
            {
                await pool.ResizeVolumeAsync(name, sizeBytes, ct).ConfigureAwait(false);
                app.Logger.LogInformation("resized volume {Volume} to {Size}", name, SizeParser.Format(sizeBytes));
                return pool.TryGetVolume(name, out Volume volume)
                    ? Results.Ok(volume.GetStats())
                    : Error(StatusCodes.Status404NotFound, $"no volume '{name}'");
            }).ConfigureAwait(false);
        });

        app.MapGet("/metrics", () =>
        {
            PoolStats? stats = null;
            try
            {
                stats = pool.GetStats();
            }
            catch (Exception e) when (e is StorageException or NotSupportedException or ObjectDisposedException)
            {
                app.Logger.LogWarning("metrics: pool stats unavailable: {Error}", e.Message);
            }
            return Results.Text(PrometheusWriter.Write(stats, catalog.MeteredVolumes()), PrometheusWriter.ContentType);
        });
    }

    private static bool TryGetSize(long? sizeBytes, string? size, out long bytes, [NotNullWhen(false)] out string? error)
    {
        if (sizeBytes is not null)
        {
            bytes = sizeBytes.Value;
            error = null;
            return true;
        }
        if (size is not null)
            return SizeParser.TryParse(size, out bytes, out error);
        bytes = 0;
        error = "give \"size\" (like \"10G\") or \"sizeBytes\"";
        return false;
    }

    private static IResult Error(int status, string message) =>
        Results.Json(new ErrorResponse(message), JsonOptions, statusCode: status);

    private static IResult Guard(Func<IResult> action)
    {
        try
        {
            return action();
        }
        catch (Exception e) when (StatusFor(e) is int status)
        {
            return Error(status, e.Message);
        }
    }

    private static async Task<IResult> GuardAsync(Func<Task<IResult>> action)
    {
        try
        {
            return await action().ConfigureAwait(false);
        }
        catch (Exception e) when (StatusFor(e) is int status)
        {
            return Error(status, e.Message);
        }
    }

    /// <summary>Engine errors as HTTP statuses; anything else is a 500 from the framework.</summary>
    internal static int? StatusFor(Exception e) => e switch
    {
        NotFoundException => StatusCodes.Status404NotFound,
        AlreadyExistsException => StatusCodes.Status409Conflict,
        NoSpaceException => StatusCodes.Status507InsufficientStorage,
        ReadOnlyVolumeException => StatusCodes.Status409Conflict,
        Dedup.OutOfRangeException or ArgumentException or FormatException => StatusCodes.Status400BadRequest,
        NotOwnerException => StatusCodes.Status503ServiceUnavailable,
        NotSupportedException => StatusCodes.Status501NotImplemented,
        InvalidOperationException => StatusCodes.Status409Conflict,
        StorageException => StatusCodes.Status500InternalServerError,
        _ => null,
    };

    public async ValueTask DisposeAsync()
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
        try
        {
            await _app.StopAsync(timeout.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }
        await _app.DisposeAsync().ConfigureAwait(false);
    }

    /// <summary>The controller handles signals itself; the web host must not.</summary>
    private sealed class ExternalLifetime : IHostLifetime
    {
        public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}

public sealed record CreateVolumeRequest(string? Name, long? SizeBytes, string? Size, int? LogicalBlockSize);

public sealed record ResizeVolumeRequest(long? SizeBytes, string? Size);

public sealed record ErrorResponse(string Error);
