"""Where the appliance runs: profiles (virtual hardware) and drivers (Target, Instance).

base.py is the one interface and its launch template (LaunchRequest: a driver writes only
``_start()`` and what it cannot do); profiles.py the platforms' virtual hardware;
registry.py maps matrix.yaml's ``driver:`` to a driver package: libvirt/ (KVM or QEMU here),
ec2/ (boto3), vmware/ (pyvmomi). credentials.py keeps secrets out of messages.
"""
