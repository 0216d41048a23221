// Samples the runtime's GC AllocationTick events (one per ~100 KB allocated) by type name, for the
// allocation tests to say what allocated when they fail.
using System.Diagnostics.Tracing;

namespace Target.Tests.Support;

/// <summary>The runtime's GC AllocationTick events (one per ~100 KB allocated), by type name.</summary>
public sealed class AllocationSampler : EventListener
{
    private readonly Dictionary<string, int> _types = new();

    protected override void OnEventSourceCreated(EventSource source)
    {
        if (source.Name == "Microsoft-Windows-DotNETRuntime") EnableEvents(source, EventLevel.Verbose, (EventKeywords)0x1);
    }

    protected override void OnEventWritten(EventWrittenEventArgs e)
    {
        if (e.EventName?.StartsWith("GCAllocationTick", StringComparison.Ordinal) != true || e.PayloadNames is null) return;
        int index = e.PayloadNames.IndexOf("TypeName");
        if (index < 0) return;
        string type = e.Payload?[index] as string ?? "?";
        lock (_types) _types[type] = _types.GetValueOrDefault(type) + 1;
    }

    public List<(string Type, int Count)> Samples()
    {
        lock (_types) return _types.Select(p => (p.Key, p.Value)).OrderByDescending(p => p.Value).ToList();
    }
}
