namespace Target;

public static class Program
{
    /// <summary>The runtime's switch that runs socket completions on its epoll threads (read once, at the first socket).</summary>
    private const string InlineSocketCompletions = "DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS";

    public static Task<int> Main(string[] args)
    {
        // A connection's receive loop continues on the epoll thread that saw its data instead of
        // hopping to a thread-pool worker (a wake-up and a sleep per receive). The NBD and iSCSI
        // loops never block, so this is safe, and on 2 cores it halved the CPU per 4 KiB write
        // (docs/PERFORMANCE.md). Set the variable to 0 to keep the thread-pool hop.
        if (Environment.GetEnvironmentVariable(InlineSocketCompletions) is null)
            Environment.SetEnvironmentVariable(InlineSocketCompletions, "1");
        return Cli.CommandLine.RunAsync(args);
    }
}
