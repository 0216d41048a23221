using Microsoft.Extensions.Logging.Console;

namespace Target.Hosting;

public static class Logging
{
    /// <summary>Console logs, one line each. Framework categories (Kestrel, hosting) only from Warning up.</summary>
    public static ILoggerFactory Create(LogLevel minimum, bool allToStandardError) =>
        LoggerFactory.Create(builder =>
        {
            builder.SetMinimumLevel(minimum);
            builder.AddFilter("Microsoft", LogLevel.Warning);
            builder.AddFilter("System", LogLevel.Warning);
            builder.AddSimpleConsole(options =>
            {
                options.SingleLine = true;
                options.TimestampFormat = "HH:mm:ss.fff ";
                options.ColorBehavior = LoggerColorBehavior.Default;
            });
            if (allToStandardError)
                builder.Services.Configure<ConsoleLoggerOptions>(options => options.LogToStandardErrorThreshold = LogLevel.Trace);
        });
}
