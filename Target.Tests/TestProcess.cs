// Settings of the test process itself.
using System.Runtime.CompilerServices;

namespace Target.Tests;

internal static class TestProcess
{
    /// <summary>
    /// Many pools run side by side in this one process (xunit runs test classes in parallel), and
    /// each pool's destager and cleaner block a thread-pool thread while they wait for the device.
    /// The thread pool adds threads only slowly once all are blocked, so a timed test could see
    /// its own readers and writers starved for seconds (13 verified reads in 6 s instead of
    /// thousands). A server runs one pool; this process starts with enough threads for many.
    /// </summary>
    [ModuleInitializer]
    internal static void StartWithEnoughThreads()
    {
        ThreadPool.GetMinThreads(out int workers, out int io);
        ThreadPool.SetMinThreads(Math.Max(workers, 64), io);
    }
}
