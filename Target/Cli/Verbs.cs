using CommandLine;

namespace Target.Cli;

[Verb("serve", HelpText = "Run the controller: open (or create) a pool, serve its volumes over NBD and iSCSI, and the admin HTTP API.")]
public sealed class ServeVerb
{
    [Option("pool", HelpText = "Pool directory (created on first run). Required unless the config file names it.")]
    public string? Pool { get; set; }

    [Option("pool-size", HelpText = "Back-end space to preallocate when the pool is created (K/M/G/T). Default 4G.")]
    public string? PoolSize { get; set; }

    [Option("device", HelpText = "At pool creation: a block device (or file) to hold the pool's data instead of a file in the pool directory.")]
    public string? Device { get; set; }

    [Option("fill-warnings", HelpText = "Live-data fill percentages that log a warning once crossed, comma-separated. Default 80,90,95.")]
    public string? FillWarnings { get; set; }

    [Option("volume", HelpText = "NAME:SIZE[:BLOCK] volume to create if missing (repeatable).")]
    public IEnumerable<string> Volumes { get; set; } = [];

    [Option("nbd", HelpText = "NBD listener HOST:PORT, or 'off'. Default 127.0.0.1:10809; port 0 picks a free port.")]
    public string? Nbd { get; set; }

    [Option("nbd-socket", HelpText = "Also serve NBD on this Unix socket path.")]
    public string? NbdSocket { get; set; }

    [Option("admin", HelpText = "Admin/metrics HTTP listener HOST:PORT, or 'off'. Default 127.0.0.1:9810.")]
    public string? Admin { get; set; }

    [Option("iscsi", HelpText = "iSCSI listener HOST:PORT (each volume is target iqn.2026-11.io.target:VOLUME, LUN 0), or 'off' (default); port 0 picks a free port.")]
    public string? Iscsi { get; set; }

    [Option("iscsi-portal", HelpText = "HOST:PORT that iSCSI discovery advertises as TargetAddress. Default: the address the initiator connected to.")]
    public string? IscsiPortal { get; set; }

    [Option("iscsi-abort-wait-ms", HelpText = "How long iSCSI task management, PREEMPT AND ABORT, logout and connection close wait for aborted or running commands, in ms. Default 10000 (below open-iscsi's 15 s abort timeout).")]
    public int? IscsiAbortWaitMs { get; set; }

    [Option("no-direct", HelpText = "Open back-end files without O_DIRECT (tmpfs).")]
    public bool NoDirect { get; set; }

    [Option("write-mode", HelpText = "wt (ack after durable) or 1way-wb (ack after memory; FLUSH/FUA honoured). Default 1way-wb.")]
    public string? WriteMode { get; set; }

    [Option("journal-flush-ms", HelpText = "Longest time a journal write waits for the disk's cache to be flushed when no host asked for durability (FLUSH, FUA and wt always wait for one), in ms; 0 flushes after every destage group. Default 5000.")]
    public int? JournalFlushMs { get; set; }

    [Option("cache", HelpText = "Write cache size (K/M/G). Default 256M.")]
    public string? Cache { get; set; }

    [Option("read-cache", HelpText = "Read cache of clean chunks (K/M/G; 0 disables). Default: an eighth of the memory (at least 256M).")]
    public string? ReadCache { get; set; }

    [Option("config", HelpText = "JSON file with the same settings (camelCase keys); options given here win.")]
    public string? Config { get; set; }

    [Option("log-level", HelpText = "trace, debug, information, warning or error. Default information.")]
    public string? LogLevel { get; set; }
}

[Verb("stats", HelpText = "Show pool and volume statistics from a running server.")]
public sealed class StatsVerb
{
    [Option("admin", Default = AdminDefaults.Address, HelpText = "Admin API HOST:PORT.")]
    public string Admin { get; set; } = AdminDefaults.Address;

    [Option("json", HelpText = "Print the raw JSON.")]
    public bool Json { get; set; }
}

/// <summary>Listed in the top-level help only; "target pool ..." is dispatched to the pool verbs.</summary>
[Verb("pool", HelpText = "Pool commands: 'target pool check --pool DIR' (offline consistency check).")]
public sealed class PoolGroupVerb
{
}

/// <summary>Listed in the top-level help only; "target volume ..." is dispatched to the volume verbs.</summary>
[Verb("volume", HelpText = "Volume commands against a running server: create, list, delete, resize.")]
public sealed class VolumeGroupVerb
{
}

[Verb("check", HelpText = "target pool check: offline consistency check of a pool no process has open.")]
public sealed class PoolCheckVerb
{
    [Option("pool", Required = true, HelpText = "Pool directory.")]
    public string Pool { get; set; } = "";

    [Option("no-direct", HelpText = "Open back-end files without O_DIRECT (tmpfs).")]
    public bool NoDirect { get; set; }
}

public abstract class AdminVerb
{
    [Option("admin", Default = AdminDefaults.Address, HelpText = "Admin API HOST:PORT.")]
    public string Admin { get; set; } = AdminDefaults.Address;
}

[Verb("create", HelpText = "target volume create NAME --size SIZE [--block-size 512|4096]")]
public sealed class VolumeCreateVerb : AdminVerb
{
    [Value(0, MetaName = "NAME", Required = true, HelpText = "Volume name.")]
    public string Name { get; set; } = "";

    [Option("size", Required = true, HelpText = "Logical size (K/M/G/T).")]
    public string Size { get; set; } = "";

    [Option("block-size", Default = 512, HelpText = "Logical block size shown to SCSI hosts: 512 or 4096.")]
    public int BlockSize { get; set; } = 512;
}

[Verb("list", HelpText = "target volume list")]
public sealed class VolumeListVerb : AdminVerb
{
    [Option("json", HelpText = "Print the raw JSON.")]
    public bool Json { get; set; }
}

[Verb("delete", HelpText = "target volume delete NAME")]
public sealed class VolumeDeleteVerb : AdminVerb
{
    [Value(0, MetaName = "NAME", Required = true, HelpText = "Volume name.")]
    public string Name { get; set; } = "";
}

[Verb("resize", HelpText = "target volume resize NAME --size SIZE")]
public sealed class VolumeResizeVerb : AdminVerb
{
    [Value(0, MetaName = "NAME", Required = true, HelpText = "Volume name.")]
    public string Name { get; set; } = "";

    [Option("size", Required = true, HelpText = "New logical size (K/M/G/T).")]
    public string Size { get; set; } = "";
}

public static class AdminDefaults
{
    public const string Address = "127.0.0.1:9810";
}
