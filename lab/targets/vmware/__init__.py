"""VMware vSphere (vCenter or ESXi) through pyvmomi: the appliance's OVA imported as a user
imports it, contextualized through guestinfo, powered on, destroyed.

The import is the one vSphere clients make: OvfManager.CreateImportSpec from the OVA's OVF
descriptor, ResourcePool.ImportVApp, then the disk uploaded over HTTP to the device URL of
the HttpNfcLease, with lease progress and HttpNfcLeaseComplete. The user-data reaches the
guest the way cloud-init's VMware datasource reads it: ``guestinfo.metadata`` and
``guestinfo.userdata`` (base64, with their ``.encoding`` keys) in the VM's extraConfig. Boot
options (``ucvm.version=1.1``) are refused: the boot loader reads them from SMBIOS OEM
strings, which vSphere does not set per VM, and it does not read guestinfo (no VMware Tools
in the initramfs); the user-data's ``[ucernvm-begin]`` block selects the version instead.

Every VM is named ``ucvm-<run id>-...`` and its annotation names the run and its run root
(and a custom field the run, where the server has custom fields), so ``sweep_vmware`` can
remove what a dead run left. Every vSphere fault becomes a TargetError naming the call and
what vSphere said; the password never appears in one, nor in a log line or a repr.

Settings (matrix.yaml ``settings:``): ``url_env`` (the environment variable holding the SDK
URL, default UCVM_VSPHERE_URL), ``datacenter``, ``datastore``, ``resource_pool``,
``network`` (names; default: the first found), ``ca_file`` (a PEM bundle to verify the
server with), ``insecure_tls: "true"`` (no certificate checks: only for a simulator's
self-signed certificate) and ``unavailable`` (a reason not to run, as for every driver). The
login comes from UCVM_VSPHERE_USER and UCVM_VSPHERE_PASSWORD.

What runs here: the whole API cycle against govmomi's vCenter simulator (OVA import,
guestinfo, power on, console, destroy, sweep), which runs no guest. Only a real vSphere boots
the appliance, and a real context run also needs a repository the guest's port group reaches
(base.REAL_CONTEXT_RUN).

- ``target``: VmwareTarget (login, placement, the launch); ``instance``: VmwareInstance;
- ``ova``: the OVA and its import; ``vsphere``: faults, tasks, inventory, VMs;
- ``sweep``: the sweeper and the run's marks on a VM.
"""

from lab.targets.vmware.instance import VmwareInstance
from lab.targets.vmware.sweep import sweep_vmware
from lab.targets.vmware.target import VmwareTarget

__all__ = ["VmwareInstance", "VmwareTarget", "sweep_vmware"]
