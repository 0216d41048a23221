using System.Net;
using Microsoft.Extensions.Logging;
using Target.Cli;
using Target.Config;
using Target.Dedup;

namespace Target.Tests.Cli;

public sealed class ServeSettingsTests
{
    [Fact]
    public void Defaults_are_loopback_4G_pool_and_1way_wb()
    {
        ServeSettings s = ServeSettings.Resolve(new ServeVerb { Pool = "./data" }, new ServeConfigFile());
        Assert.Equal(Path.GetFullPath("./data"), s.PoolDirectory);
        Assert.Equal(4L << 30, s.PoolSizeBytes);
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, 10809), s.Nbd);
        Assert.Equal(new IPEndPoint(IPAddress.Loopback, 9810), s.Admin);
        Assert.Null(s.NbdSocket);
        Assert.False(s.NoDirect);
        Assert.Equal(WriteMode.OneWayWriteBack, s.WriteMode);
        Assert.Equal(256L << 20, s.CacheBytes);
        Assert.Equal(LogLevel.Information, s.LogLevel);
        Assert.Empty(s.Volumes);
    }

    [Fact]
    public void Device_read_cache_and_fill_warnings_are_parsed_and_checked()
    {
        ServeSettings s = ServeSettings.Resolve(new ServeVerb { Pool = "/tmp/p", Device = "/dev/vdb", ReadCache = "0", FillWarnings = "70, 85,99" }, new ServeConfigFile());
        Assert.Equal("/dev/vdb", s.Device);
        Assert.Equal(0, s.ReadCacheBytes);
        Assert.Equal([70, 85, 99], s.FillWarningPercents);

        ServeSettings defaults = ServeSettings.Resolve(new ServeVerb { Pool = "/tmp/p" }, new ServeConfigFile());
        Assert.Null(defaults.Device);
        Assert.Equal(ServeSettings.DefaultReadCacheFor(GC.GetGCMemoryInfo().TotalAvailableMemoryBytes), defaults.ReadCacheBytes);
        Assert.Equal(3L << 30, ServeSettings.DefaultReadCacheFor(24L << 30));
        Assert.Equal(ServeSettings.MinDefaultReadCacheBytes, ServeSettings.DefaultReadCacheFor(1L << 30));
        Assert.Equal(384L << 20, ServeSettings.DefaultReadCacheFor((3L << 30) + 12345));
        Assert.Equal([80, 90, 95], defaults.FillWarningPercents);

        Assert.Throws<FormatException>(() => ServeSettings.Resolve(new ServeVerb { Pool = "/tmp/p", FillWarnings = "80,101" }, new ServeConfigFile()));
        Assert.Throws<FormatException>(() => ServeSettings.Resolve(new ServeVerb { Pool = "/tmp/p", FillWarnings = "eighty" }, new ServeConfigFile()));
    }

    [Fact]
    public void Journal_flush_interval_defaults_to_5_s_comes_from_file_or_command_line_and_is_not_negative()
    {
        Assert.Equal(5000, ServeSettings.Resolve(new ServeVerb { Pool = "/tmp/p" }, new ServeConfigFile()).JournalFlushMs);
        ServeConfigFile file = ServeConfigFile.Parse("{ \"journalFlushMs\": 250 }");
        Assert.Equal(250, ServeSettings.Resolve(new ServeVerb { Pool = "/tmp/p" }, file).JournalFlushMs);
        Assert.Equal(0, ServeSettings.Resolve(new ServeVerb { Pool = "/tmp/p", JournalFlushMs = 0 }, file).JournalFlushMs);
        Assert.Throws<FormatException>(() => ServeSettings.Resolve(new ServeVerb { Pool = "/tmp/p", JournalFlushMs = -1 }, new ServeConfigFile()));
    }

    [Fact]
    public void Command_line_options_are_parsed()
    {
        var cli = new ServeVerb
        {
            Pool = "/tmp/p",
            PoolSize = "8G",
            Volumes = ["vol0:10G", "b:1T:4096"],
            Nbd = "127.0.0.1:0",
            NbdSocket = "/tmp/nbd.sock",
            Admin = "off",
            NoDirect = true,
            WriteMode = "wt",
            Cache = "1G",
            LogLevel = "debug",
        };
        ServeSettings s = ServeSettings.Resolve(cli, new ServeConfigFile());
        Assert.Equal("/tmp/p", s.PoolDirectory);
        Assert.Equal(8L << 30, s.PoolSizeBytes);
        Assert.Equal([new VolumeSpec("vol0", 10L << 30, 512), new VolumeSpec("b", 1L << 40, 4096)], s.Volumes);
        Assert.Equal(0, s.Nbd!.Port);
        Assert.Equal("/tmp/nbd.sock", s.NbdSocket);
        Assert.Null(s.Admin);
        Assert.True(s.NoDirect);
        Assert.Equal(WriteMode.WriteThrough, s.WriteMode);
        Assert.Equal(1L << 30, s.CacheBytes);
        Assert.Equal(LogLevel.Debug, s.LogLevel);
    }

    [Fact]
    public void Config_file_is_read_and_the_command_line_wins()
    {
        ServeConfigFile file = ServeConfigFile.Parse("""
            {
              // a comment
              "pool": "/srv/pool",
              "poolSize": 2147483648,
              "volumes": ["a:1G", {"name": "b", "size": "2G", "logicalBlockSize": 4096}, {"name": "c", "sizeBytes": 4096}],
              "nbd": "127.0.0.1:20000",
              "nbdSocket": "/run/target.sock",
              "admin": "[::1]:9999",
              "noDirect": true,
              "writeMode": "wt",
              "cache": "64M",
              "logLevel": "warning",
            }
            """);
        ServeSettings fromFile = ServeSettings.Resolve(new ServeVerb(), file);
        Assert.Equal("/srv/pool", fromFile.PoolDirectory);
        Assert.Equal(2L << 30, fromFile.PoolSizeBytes);
        Assert.Equal(["a", "b", "c"], fromFile.Volumes.Select(v => v.Name));
        Assert.Equal(4096, fromFile.Volumes[1].LogicalBlockSize);
        Assert.Equal(4096, fromFile.Volumes[2].SizeBytes);
        Assert.Equal(20000, fromFile.Nbd!.Port);
        Assert.Equal("/run/target.sock", fromFile.NbdSocket);
        Assert.Equal(new IPEndPoint(IPAddress.IPv6Loopback, 9999), fromFile.Admin);
        Assert.True(fromFile.NoDirect);
        Assert.Equal(WriteMode.WriteThrough, fromFile.WriteMode);
        Assert.Equal(64L << 20, fromFile.CacheBytes);
        Assert.Equal(LogLevel.Warning, fromFile.LogLevel);

        var cli = new ServeVerb { Pool = "/other", PoolSize = "1G", Volumes = ["a:5G"], Nbd = "127.0.0.1:0", WriteMode = "1way-wb", Cache = "128M" };
        ServeSettings merged = ServeSettings.Resolve(cli, file);
        Assert.Equal("/other", merged.PoolDirectory);
        Assert.Equal(1L << 30, merged.PoolSizeBytes);
        Assert.Equal(5L << 30, merged.Volumes.Single(v => v.Name == "a").SizeBytes);
        Assert.Equal(3, merged.Volumes.Count);
        Assert.Equal(0, merged.Nbd!.Port);
        Assert.Equal(WriteMode.OneWayWriteBack, merged.WriteMode);
        Assert.Equal(128L << 20, merged.CacheBytes);
    }

    [Fact]
    public void The_iscsi_abort_wait_comes_from_the_config_file_or_the_command_line_and_reaches_the_server_options()
    {
        ServeSettings defaults = ServeSettings.Resolve(new ServeVerb { Pool = "/p" }, new ServeConfigFile());
        Assert.Equal(TimeSpan.FromSeconds(10), defaults.IscsiOptions.ToServerOptions("/p").AbortWaitTimeout);
        Assert.Equal(new Target.Protocol.Iscsi.IscsiServerOptions().AbortWaitTimeout, defaults.IscsiOptions.ToServerOptions("/p").AbortWaitTimeout);

        ServeConfigFile file = ServeConfigFile.Parse("""{"pool": "/p", "iscsiAbortWaitMs": 2500}""");
        ServeSettings fromFile = ServeSettings.Resolve(new ServeVerb(), file);
        Assert.Equal(2500, fromFile.IscsiOptions.AbortWaitMs);
        Assert.Equal(TimeSpan.FromMilliseconds(2500), fromFile.IscsiOptions.ToServerOptions("/p").AbortWaitTimeout);

        // The real command-line parser: the long option name and its value.
        using var parser = new CommandLine.Parser(settings => settings.HelpWriter = null);
        ServeVerb cli = ((CommandLine.Parsed<ServeVerb>)parser.ParseArguments<ServeVerb>(["--pool", "/p", "--iscsi-abort-wait-ms", "750"])).Value;
        Assert.Equal(750, cli.IscsiAbortWaitMs);
        ServeSettings merged = ServeSettings.Resolve(cli, file);
        Assert.Equal(TimeSpan.FromMilliseconds(750), merged.IscsiOptions.ToServerOptions("/p").AbortWaitTimeout);

        Assert.Throws<FormatException>(() => ServeSettings.Resolve(new ServeVerb { Pool = "/p", IscsiAbortWaitMs = 0 }, new ServeConfigFile()));
        Assert.Throws<FormatException>(() => ServeSettings.Resolve(new ServeVerb(), ServeConfigFile.Parse("""{"pool": "/p", "iscsiAbortWaitMs": 600000}""")));
        Assert.Throws<FormatException>(() => ServeConfigFile.Parse("""{"pool": "/p", "iscsiAbortWaitMs": "soon"}"""));
    }

    [Fact]
    public void Config_file_loads_from_disk()
    {
        string path = Path.Combine(Path.GetTempPath(), $"target-config-{Guid.NewGuid():N}.json");
        try
        {
            File.WriteAllText(path, """{"pool": "/p", "volumes": ["v:1M"]}""");
            ServeSettings s = ServeSettings.Resolve(new ServeVerb { Config = path });
            Assert.Equal("/p", s.PoolDirectory);
            Assert.Equal(1L << 20, s.Volumes.Single().SizeBytes);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Theory]
    [InlineData("""{"pool": "/p", "poolsize": "x"}""")]
    [InlineData("""{"pool": "/p", "unknownKey": 1}""")]
    [InlineData("""{"pool": "/p", "volumes": ["novolume"]}""")]
    [InlineData("""{"pool": "/p", "volumes": [{"name": "x"}]}""")]
    [InlineData("""{"pool": "/p", "volumes": [{"name": "x", "size": "1G", "color": "red"}]}""")]
    [InlineData("""{"pool": "/p", "cache": true}""")]
    [InlineData("""not json""")]
    public void Bad_config_files_are_rejected(string json) =>
        Assert.Throws<FormatException>(() => ServeConfigFile.Parse(json));

    [Fact]
    public void Missing_config_file_is_a_format_error() =>
        Assert.Throws<FormatException>(() => ServeSettings.Resolve(new ServeVerb { Config = "/nonexistent/target.json" }));

    [Theory]
    [InlineData(null, null, null, null)]                  // no pool anywhere
    [InlineData("/p", "wb", null, null)]                  // wb needs a partner
    [InlineData("/p", "fast", null, null)]
    [InlineData("/p", null, "1.5G", null)]
    [InlineData("/p", null, null, "somewhere")]
    public void Bad_settings_are_rejected(string? pool, string? writeMode, string? poolSize, string? nbd) =>
        Assert.Throws<FormatException>(() => ServeSettings.Resolve(
            new ServeVerb { Pool = pool, WriteMode = writeMode, PoolSize = poolSize, Nbd = nbd }, new ServeConfigFile()));

    [Fact]
    public void A_volume_named_twice_in_the_config_is_rejected() =>
        Assert.Throws<FormatException>(() => ServeSettings.Resolve(new ServeVerb { Pool = "/p" }, ServeConfigFile.Parse("""{"volumes": ["a:1G", "a:2G"]}""")));

    [Theory]
    [InlineData("vol0:10G", "vol0", 10L << 30, 512)]
    [InlineData("a.b_c-d:4K:4096", "a.b_c-d", 4096L, 4096)]
    public void Volume_specs_parse(string text, string name, long sizeBytes, int block)
    {
        VolumeSpec spec = VolumeSpec.Parse(text);
        Assert.Equal(new VolumeSpec(name, sizeBytes, block), spec);
        Assert.Equal(spec, VolumeSpec.Parse(spec.ToString()));
    }

    [Theory]
    [InlineData("vol0")]
    [InlineData("vol0:")]
    [InlineData(":1G")]
    [InlineData("vol0:1000")]        // not a multiple of 4096
    [InlineData("vol0:0")]
    [InlineData("vol0:1G:1024")]     // block size
    [InlineData("a/b:1G")]
    [InlineData("-x:1G")]
    [InlineData("vol0:1G:512:9")]
    public void Bad_volume_specs_are_rejected(string text) =>
        Assert.Throws<FormatException>(() => VolumeSpec.Parse(text));

    [Theory]
    [InlineData("127.0.0.1:10809", "127.0.0.1", 10809)]
    [InlineData("localhost:0", "127.0.0.1", 0)]
    [InlineData(":9810", "127.0.0.1", 9810)]
    [InlineData("[::1]:80", "::1", 80)]
    [InlineData("0.0.0.0:1", "0.0.0.0", 1)]
    public void Endpoints_parse(string text, string address, int port)
    {
        IPEndPoint endPoint = EndpointParser.Parse(text);
        Assert.Equal(IPAddress.Parse(address), endPoint.Address);
        Assert.Equal(port, endPoint.Port);
    }

    [Theory]
    [InlineData("")]
    [InlineData("127.0.0.1")]
    [InlineData("127.0.0.1:")]
    [InlineData("127.0.0.1:65536")]
    [InlineData("127.0.0.1:-1")]
    public void Bad_endpoints_are_rejected(string text) =>
        Assert.False(EndpointParser.TryParse(text, out _, out _));
}
