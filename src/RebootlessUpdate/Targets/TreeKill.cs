using Mono.Unix.Native;
using RebootlessUpdate.Criu.Interop;

namespace RebootlessUpdate.Targets;

/// <summary>
/// Ends a running tree for good: every process is stopped first, walking down until no new child appears (a stopped
/// process forks no more), then all are killed; each signal goes only to the process that was found, never to a
/// later one with its pid. Killing the root alone is not enough outside a PID namespace: its children would be
/// reparented and run on.
/// </summary>
internal static class TreeKill
{
    /// <summary>Stops, then kills, the tree under <paramref name="root"/>; returns how many processes were killed.</summary>
    internal static int Kill(ProcessIdentity root)
    {
        if (!root.IsAlive)
        {
            return 0;
        }

        var found = new Dictionary<int, ulong>();
        for (var pass = 0; pass < 100; pass++)
        {
            var grew = false;
            foreach (var pid in ProcStat.Tree(root.Pid))
            {
                if (found.ContainsKey(pid) || ProcessIdentity.Of(pid) is not { } p)
                {
                    continue;
                }

                found[pid] = p.StartTime;
                _ = PidfdSignal.Send(pid, p.StartTime, Signum.SIGSTOP);
                grew = true;
            }

            if (!grew)
            {
                break;
            }
        }

        return found.Count(p => PidfdSignal.Kill(p.Key, p.Value));
    }
}
