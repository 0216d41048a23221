using CommandLine;
using Target.Config;
using Target.Hosting;

namespace Target.Cli;

/// <summary>
/// Verbs: serve, stats, pool check, volume create|list|delete|resize. CommandLineParser has no nested
/// verbs, so "pool" and "volume" pick a second verb set. Exit codes: 0 ok, 1 failed, 2 usage, 3 server unreachable.
/// </summary>
public static class CommandLine
{
    public const int ExitUsage = 2;

    public static async Task<int> RunAsync(string[] args)
    {
        if (args.Length > 0 && args[0] == "pool")
            return await DispatchAsync(args[1..], typeof(PoolCheckVerb)).ConfigureAwait(false);
        if (args.Length > 0 && args[0] == "volume")
            return await DispatchAsync(args[1..], typeof(VolumeCreateVerb), typeof(VolumeListVerb), typeof(VolumeDeleteVerb), typeof(VolumeResizeVerb)).ConfigureAwait(false);
        return await DispatchAsync(args, typeof(ServeVerb), typeof(StatsVerb), typeof(PoolGroupVerb), typeof(VolumeGroupVerb)).ConfigureAwait(false);
    }

    private static async Task<int> DispatchAsync(string[] args, params Type[] verbs)
    {
        using var parser = new Parser(settings =>
        {
            settings.AllowMultiInstance = true;
            settings.CaseInsensitiveEnumValues = true;
            settings.HelpWriter = Console.Error;
        });
        ParserResult<object> result = parser.ParseArguments(args, verbs);
        if (result is NotParsed<object> notParsed)
            return notParsed.Errors.All(e => e.Tag is ErrorType.HelpRequestedError or ErrorType.HelpVerbRequestedError or ErrorType.VersionRequestedError) ? 0 : ExitUsage;

        try
        {
            return result.Value switch
            {
                ServeVerb serve => await ServeCommand.RunAsync(ServeSettings.Resolve(serve)).ConfigureAwait(false),
                StatsVerb stats => await ClientCommands.StatsAsync(stats, Console.Out).ConfigureAwait(false),
                PoolCheckVerb check => await PoolCheckCommand.RunAsync(check, Console.Out, Console.Error).ConfigureAwait(false),
                VolumeCreateVerb create => await ClientCommands.VolumeCreateAsync(create, Console.Out).ConfigureAwait(false),
                VolumeListVerb list => await ClientCommands.VolumeListAsync(list, Console.Out).ConfigureAwait(false),
                VolumeDeleteVerb delete => await ClientCommands.VolumeDeleteAsync(delete, Console.Out).ConfigureAwait(false),
                VolumeResizeVerb resize => await ClientCommands.VolumeResizeAsync(resize, Console.Out).ConfigureAwait(false),
                PoolGroupVerb => Usage("usage: target pool check --pool DIR [--no-direct]"),
                VolumeGroupVerb => Usage("usage: target volume create|list|delete|resize [--admin HOST:PORT] ..."),
                _ => Usage("unknown verb"),
            };
        }
        catch (FormatException e)
        {
            Console.Error.WriteLine($"target: {e.Message}");
            return ExitUsage;
        }
    }

    private static int Usage(string text)
    {
        Console.Error.WriteLine(text);
        return ExitUsage;
    }
}
