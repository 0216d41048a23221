namespace Target;

public static class Program
{
    public static Task<int> Main(string[] args) => Cli.CommandLine.RunAsync(args);
}
