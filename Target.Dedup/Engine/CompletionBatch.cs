// Completions a thread finishes as one batch (the io_uring thread reaps many device reads at once).
// A protocol connection that would send its replies on every completion can ask to be called once
// at the end of the batch instead, so one send carries every reply the batch produced.
// Invariants: inside a batch each deferred listener is called exactly once, at the batch's end, on
// the batch's thread; outside a batch (or when the batch's list is full) TryDefer returns false and
// the caller flushes at once. Nothing is allocated per batch.
namespace Target.Dedup;

public interface ICompletionBatchListener
{
    /// <summary>The batch that deferred this listener ended: flush now. Must not throw.</summary>
    void OnCompletionBatchEnd();
}

public static class CompletionBatch
{
    /// <summary>Distinct listeners one batch remembers; more flush at once.</summary>
    private const int ListenersMax = 64;

    [ThreadStatic] private static ICompletionBatchListener?[]? t_listeners;
    [ThreadStatic] private static int t_count;
    [ThreadStatic] private static bool t_active;

    /// <summary>True when the calling thread is finishing a batch: <paramref name="listener"/> is called once at its end.</summary>
    public static bool TryDefer(ICompletionBatchListener listener)
    {
        if (!t_active) return false;
        ICompletionBatchListener?[] listeners = t_listeners!;
        for (int i = 0; i < t_count; i++)
        {
            if (ReferenceEquals(listeners[i], listener)) return true;
        }
        if (t_count == listeners.Length) return false;
        listeners[t_count++] = listener;
        return true;
    }

    internal static void Begin()
    {
        t_listeners ??= new ICompletionBatchListener?[ListenersMax];
        t_active = true;
    }

    internal static void End()
    {
        t_active = false;
        ICompletionBatchListener?[] listeners = t_listeners!;
        int count = t_count;
        t_count = 0;
        for (int i = 0; i < count; i++)
        {
            ICompletionBatchListener listener = listeners[i]!;
            listeners[i] = null;
            listener.OnCompletionBatchEnd();
        }
    }
}
