using RebootlessUpdate.Criu;
using RebootlessUpdate.TestSupport;

namespace RebootlessUpdate.IntegrationTests;

/// <summary>Shared set-up of the tests that drive the testbed's real criu through the client: root, the testbed, a client, a scratch folder.</summary>
public abstract class CriuTestFixture
{
    private readonly string _prefix;

    protected CriuTestFixture(string prefix) => _prefix = prefix;

    protected Testbed TestbedInfo { get; private set; } = null!;

    protected CriuClient Client { get; private set; } = null!;

    protected string ScratchDirectory { get; private set; } = null!;

    [SetUp]
    public void SetUpCriu()
    {
        TestbedInfo = Testbed.Require();
        Testbed.RequireRoot();
        Client = new CriuClient(new CriuClientOptions { CriuPath = TestbedInfo.Criu });
        ScratchDirectory = Directory.CreateTempSubdirectory(_prefix).FullName;
    }

    /// <summary>Creates (or returns) a folder under the scratch folder.</summary>
    protected string NewDir(string name) => Directory.CreateDirectory(Path.Combine(ScratchDirectory, name)).FullName;
}
