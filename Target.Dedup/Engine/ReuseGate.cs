// The segment reuse gate: device reads hold it (shared) from looking up a chunk's location to the
// end of the device read; a checkpoint takes it exclusively for the instant it hands quarantined
// segments back to the free list. Unlike ReaderWriterLockSlim the shared side is not tied to a
// thread: a read entered on a connection's thread is exited on the io_uring completion thread.
// Invariants: while the exclusive side is held, no shared holder exists and none can enter;
// the shared side must not be entered again by a holder (a waiting writer would deadlock it).
namespace Target.Dedup.Engine;

internal sealed class ReuseGate
{
    private int _readers;
    private int _writerWaiting;
    private readonly object _writers = new();

    public void EnterRead()
    {
        while (true)
        {
            Interlocked.Increment(ref _readers);
            if (Volatile.Read(ref _writerWaiting) == 0) return;
            // A writer wants the gate: step back until it is done.
            Interlocked.Decrement(ref _readers);
            var spin = new SpinWait();
            while (Volatile.Read(ref _writerWaiting) != 0) spin.SpinOnce();
        }
    }

    public void ExitRead() => Interlocked.Decrement(ref _readers);

    /// <summary>Waits until no read holds the gate, and keeps new ones out until <see cref="ExitWriteLock"/>.</summary>
    public void EnterWriteLock()
    {
        Monitor.Enter(_writers);
        Interlocked.Exchange(ref _writerWaiting, 1);
        var spin = new SpinWait();
        while (Volatile.Read(ref _readers) != 0) spin.SpinOnce();
    }

    public void ExitWriteLock()
    {
        Volatile.Write(ref _writerWaiting, 0);
        Monitor.Exit(_writers);
    }
}
